// The compiled part of mproc (CMake: MPROC_COMPILED=ON): the code that does not depend
// on a program's own types, compiled once here rather than in every file that includes
// mproc. Files built with MPROC_HEADER_ONLY=0 (mproc::mproc sets it) see only the
// declarations of these functions, declare the instantiations below `extern`, and link
// this file's.
#include <mproc/mproc.hpp>

// The bodies the headers only declare in this mode (MPROC_FUNC is empty here: each is
// compiled once, as an ordinary function).
#include <mproc/detail/process_impl.hpp>
#include <mproc/detail/posix/forkserver_impl.hpp>
#include <mproc/detail/posix/spawn_impl.hpp>
#include <mproc/detail/posix/tracker_impl.hpp>
#include <mproc/detail/remote_exception_impl.hpp>
#include <mproc/serialization/type_name_impl.hpp>
#include <mproc/pool/async_result_impl.hpp>
#include <mproc/pool/worker_impl.hpp>
#include <mproc/detail/manager_client_impl.hpp>
#include <mproc/managers/manager_impl.hpp>

#if MPROC_HEADER_ONLY
#error "src/mproc.cpp is the compiled library: build it with MPROC_HEADER_ONLY=0"
#endif

namespace mproc {
template class basic_pool<dynamic_policy>;
template class basic_pool<fork_policy>;
template class basic_pool<spawn_policy>;
template class basic_pool<forkserver_policy>;
}  // namespace mproc
