/// \file
/// mproc::Manager: shared dicts, lists, namespaces, queues, locks and values that any
/// process can use through copyable proxies, as Python's multiprocessing.Manager.
///
/// How it works (see detail/manager_store.hpp for the reasoning): the objects live in
/// one shared-memory segment; proxies in processes that have the segment mapped
/// operate on it directly under a robust process-shared mutex, so every operation is
/// synchronous, immediately visible everywhere, and costs no round trip. A server
/// process (forked by the Manager) owns the segment and listens on a Unix socket in a
/// private 0700 directory: a process that did not inherit the mapping (a pool worker
/// started before the Manager, a process given a proxy through a pipe or queue, an
/// unrelated process calling Manager::connect) authenticates there (SO_PEERCRED
/// same-uid check plus a mutual HMAC-SHA256 challenge with the manager's key) and
/// receives the segment's descriptor. With manager_options::address = "host:port" the
/// server also listens on TCP; clients connecting there (Manager::connect) send each
/// operation as a request that the server executes against the same segment.
///
/// update(key, fn, default) is atomic: fn runs while the shared state is locked. Local
/// proxies run fn in the calling process, so any callable works. Over TCP the server
/// runs it: fn must then be a captureless lambda or stateless function object, sent as
/// a stable id of its type that the server (the same program) resolves in its own
/// image (the id is registered at start-up in every process running the program), or
/// a function pointer, sent as an offset from a known function of the executable and
/// used only if the server's executable has the same GNU build-id.
#pragma once

// The parts, in reading order: what a proxy is, the proxies to containers and to
// synchronisation objects, then the Manager that makes them. The machinery behind
// them is in detail/manager_*.hpp (messages, store, execute, protocol, client,
// updaters, server).
#include "managers/base_proxy.hpp"
#include "managers/data_proxies.hpp"
#include "managers/sync_proxies.hpp"
#include "managers/manager.hpp"
