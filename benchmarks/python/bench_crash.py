"""What each Python executor does when things go wrong, found by doing it. Prints one
JSON object per executor and scenario:

    {"impl": ..., "scenario": ..., "got": ..., "seconds": ..., "lost": ..., "usable": ...}

    bench_crash.py [EXECUTORS] [SCENARIOS]

EXECUTORS: comma-separated from mp_pool, ppe, loky, pebble (default: all);
SCENARIOS from kill, timeout, sigint (default: all). Run by bench_crash (C++), which
adds mproc's rows; each scenario runs in its own process group with a hard time limit,
and whatever it leaves behind is killed afterwards.

- kill: a 1,000-item map with chunksize 10 over Pool(2); the worker running item 500
  SIGKILLs itself (once). Results are taken as the executor's lazy ordered map yields
  them (multiprocessing.Pool.imap, Executor.map, pebble's map iterator), going on past
  errors where it lets one; "lost" counts the items other than item 500 whose result
  never arrived. The caller waits at most 10 s.
- timeout: a task that would run 20 s, bounded to 1 s with the executor's own means (a
  per-task timeout where it has one: pebble's schedule(timeout=); else the wait's:
  AsyncResult.get / Future.result(timeout)). "usable": a later map of 2 x 0.2 s tasks
  finishes in under 0.35 s, i.e. both workers are free again (the overrun stopped).
- sigint: Ctrl-C, as a terminal sends it (SIGINT to the whole process group) 0.5 s
  into a 1,000-item map of 10 ms tasks inside the usual `with` block; what the program
  prints, when it has exited, and whether any of its processes outlive it by 1 s.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from workloads import peer_installed

EXECUTORS = ["mp_pool", "ppe", "loky", "pebble"]
SCENARIOS = ["kill", "timeout", "sigint"]
LABELS = {"mp_pool": "multiprocessing.Pool", "ppe": "concurrent.futures.ProcessPoolExecutor",
          "loky": "loky (reusable executor)", "pebble": "pebble.ProcessPool"}
WAIT_LIMIT = 10.0

_marker = None  # a file whose creation claims the one kill


def die_at_500(x):
    if x == 500:
        try:
            os.close(os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.kill(os.getpid(), signal.SIGKILL)
        except FileExistsError:
            pass
    time.sleep(0.001)
    return x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def identity(x):
    return x


def make(name):
    import multiprocessing as mp
    fork = mp.get_context("fork")
    if name == "mp_pool":
        return fork.Pool(2)
    if name == "ppe":
        import concurrent.futures as cf
        return cf.ProcessPoolExecutor(2, mp_context=fork)
    if name == "loky":
        from joblib.externals import loky
        return loky.get_reusable_executor(max_workers=2)
    if name == "pebble":
        import pebble
        return pebble.ProcessPool(max_workers=2, context=fork)
    raise ValueError(name)


def lazy_map(name, ex, f, items, chunksize):
    if name == "mp_pool":
        return ex.imap(f, items, chunksize=chunksize)
    if name == "pebble":
        return ex.map(f, items, chunksize=chunksize).result()
    return ex.map(f, items, chunksize=chunksize)


def submit(name, ex, f, arg, timeout=None):
    if name == "mp_pool":
        return ex.apply_async(f, (arg,))
    if name == "pebble":
        return ex.schedule(f, args=(arg,), timeout=timeout)
    return ex.submit(f, arg)


def wait(name, fut, timeout):
    return fut.get(timeout) if name == "mp_pool" else fut.result(timeout=timeout)


def usable(name, ex, limit=5.0):
    """A small map finishes within `limit` seconds: (yes/no, seconds it took)."""
    t = time.monotonic()
    try:
        if name == "mp_pool":
            ok = ex.map_async(identity, range(20)).get(limit) == list(range(20))
        else:
            futs = [submit(name, ex, identity, i) for i in range(20)]
            ok = [wait(name, f, max(0.01, limit - (time.monotonic() - t))) for f in futs] == list(range(20))
        return ok, time.monotonic() - t
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return False, f"{type(e).__name__}"


def exc_text(e):
    msg = str(e).strip()
    return type(e).__name__ + (f": {msg}" if msg and len(msg) <= 40 else "")


def scenario_kill(name):
    global _marker
    fd, _marker = tempfile.mkstemp(prefix="mproc-crash-")
    os.close(fd)
    os.unlink(_marker)
    ex = make(name)
    try:
        list(lazy_map(name, ex, identity, range(4), 1))  # workers up (loky starts them on first use)
        t0 = time.monotonic()
        # The caller's loop runs in a thread, so that a wait with no timeout of its own
        # (multiprocessing's imap with chunksize > 1 is a plain generator) stays bounded.
        state = {"values": set(), "errors": 0, "first_error": None, "first_error_at": None, "index": 0}

        def consume():
            it = iter(lazy_map(name, ex, die_at_500, range(1000), 10))
            while True:
                try:
                    v = next(it)
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001 - what the caller gets is the result
                    state["errors"] += 1
                    if state["first_error"] is None:
                        state["first_error"], state["first_error_at"] = exc_text(e), time.monotonic() - t0
                    state["index"] += 1
                    if name in ("ppe", "loky"):  # their iterator is finished after an error
                        return
                    continue
                state["values"].add(v)
                state["index"] += 1

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        th.join(WAIT_LIMIT)
        hung = th.is_alive()
        got_values, errors, index = set(state["values"]), state["errors"], state["index"]
        first_error, first_error_at = state["first_error"], state["first_error_at"]
        elapsed = time.monotonic() - t0
        ok = len(got_values & set(range(1000)))
        if hung:
            got = f"hangs after {index} results (bounded by the {WAIT_LIMIT:.0f} s wait)"
            seconds = WAIT_LIMIT
        elif first_error:
            got = first_error + (f" ({errors} errors)" if errors > 1 else "")
            seconds = first_error_at
        else:
            got = "every result, no error"
            seconds = elapsed
        if name == "loky":  # loky's way: the next get_reusable_executor() builds a new one
            t = time.monotonic()
            ex = make(name)
            use, use_s = usable(name, ex)
            use_s = time.monotonic() - t if use else use_s
        else:
            use, use_s = usable(name, ex)
        return {"got": got, "seconds": seconds, "lost": 999 - ok + (1 if ok == 1000 else 0),
                "usable": ("yes" if use else "no") + (f" ({use_s:.2f} s)" if use and isinstance(use_s, float)
                                                      and use_s > 0.2 else "")}
    finally:
        shutdown_hard(name, ex)


def scenario_timeout(name):
    ex = make(name)
    try:
        wait(name, submit(name, ex, identity, 0), 30)  # workers up
        t0 = time.monotonic()
        fut = submit(name, ex, nap, 20.0, timeout=1.0)
        try:
            wait(name, fut, 1.0 if name != "pebble" else 30)
            got, seconds = "the result (no timeout)", time.monotonic() - t0
        except Exception as e:  # noqa: BLE001
            got, seconds = exc_text(e), time.monotonic() - t0
        time.sleep(0.1)
        t = time.monotonic()
        try:
            if name == "mp_pool":
                ex.map_async(nap, [0.2, 0.2], chunksize=1).get(5)
            else:
                for f in [submit(name, ex, nap, 0.2) for _ in range(2)]:
                    wait(name, f, 5)
            took = time.monotonic() - t
            use = "yes, both workers" if took < 0.35 else f"one worker only (2 x 0.2 s took {took:.2f} s)"
        except Exception as e:  # noqa: BLE001
            use = f"no ({type(e).__name__})"
        return {"got": got, "seconds": seconds, "lost": "-", "usable": use}
    finally:
        shutdown_hard(name, ex)


def shutdown_hard(name, ex):
    """Leaves nothing running: the next scenario starts on an idle machine."""
    try:
        if name in ("mp_pool",):
            ex.terminate()
            ex.join()
        elif name == "pebble":
            ex.stop()
            ex.join(timeout=5)
        elif name == "loky":
            ex.shutdown(wait=False, kill_workers=True)
        else:
            for p in list(getattr(ex, "_processes", {}).values()):
                p.kill()
            ex.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - best effort; the process group is killed after
        pass


def sigint_child(name, out_path):
    """The program that gets Ctrl-C: writes what it caught, if anything, to out_path
    (a file, not a pipe: processes it leaves behind could hold a pipe open)."""
    def say(caught):
        with open(out_path, "w") as f:
            f.write(caught)
    try:
        if name == "mp_pool":
            with make(name) as ex:
                ex.map(nap, [0.01] * 1000, chunksize=1)
        elif name == "pebble":
            with make(name) as ex:
                list(ex.map(nap, [0.01] * 1000, chunksize=1).result())
        else:
            with make(name) as ex:
                list(ex.map(nap, [0.01] * 1000))
        say("nothing: the map completed")
    except KeyboardInterrupt:
        say("KeyboardInterrupt")
        sys.exit(130)


def group_alive(pgid):
    """Processes of the group still running. Zombies do not count: they are dead, and
    where PID 1 does not reap (a container) an orphan stays one."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            n += 1
    return n


def scenario_sigint(name):
    fd, out_path = tempfile.mkstemp(prefix="mproc-crash-")
    os.close(fd)
    p = subprocess.Popen([sys.executable, __file__, "--sigint-child", name, out_path], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    pgid = p.pid
    try:
        time.sleep(1.5 if name == "loky" else 0.5)  # loky's workers are fresh interpreters
        os.killpg(pgid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            p.wait(timeout=WAIT_LIMIT)
            seconds = time.monotonic() - t0
            with open(out_path) as f:
                caught = f.read() or "nothing caught"
            got = f"{caught}; exit status {p.returncode}"
        except subprocess.TimeoutExpired:
            seconds = WAIT_LIMIT
            got = f"hangs: still running {WAIT_LIMIT:.0f} s after Ctrl-C"
        time.sleep(1.0)
        left = group_alive(pgid)
        return {"got": got, "seconds": seconds, "lost": "-",
                "usable": f"{left} processes left running" if left else "all processes gone"}
    finally:
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        p.wait()
        os.unlink(out_path)


def remove_orphan_loky_semaphores():
    """loky names its POSIX semaphores sem.loky-<creator pid>-*; when the harness kills
    a loky executor's whole group, its resource tracker dies too and they stay in
    /dev/shm. Removes those whose creator is gone (a live executor keeps its own)."""
    for path in glob.glob("/dev/shm/sem.loky-*-*"):
        try:
            pid = int(os.path.basename(path).split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        except (ValueError, PermissionError):
            pass


def run_one(name, scenario):
    """Runs one scenario in a fresh process group (bounded), then kills what is left."""
    fd, out_path = tempfile.mkstemp(prefix="mproc-crash-")
    os.close(fd)
    p = subprocess.Popen([sys.executable, __file__, "--one", name, scenario, out_path], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout=60)
        with open(out_path) as f:
            rec = json.loads(f.read())
    except (subprocess.TimeoutExpired, ValueError):
        rec = {"got": "the harness itself did not finish in 60 s", "seconds": None, "lost": "-", "usable": "-"}
    finally:
        if group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        os.unlink(out_path)
        remove_orphan_loky_semaphores()
    return rec


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--sigint-child":
        return sigint_child(sys.argv[2], sys.argv[3])
    if len(sys.argv) >= 5 and sys.argv[1] == "--one":
        rec = {"kill": scenario_kill, "timeout": scenario_timeout, "sigint": scenario_sigint}[sys.argv[3]](sys.argv[2])
        with open(sys.argv[4], "w") as f:
            f.write(json.dumps(rec))
        os._exit(0)  # no waiting on what the scenario left behind: the caller kills it
    names = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else EXECUTORS
    scenarios = sys.argv[2].split(",") if len(sys.argv) > 2 else SCENARIOS
    for name in names:
        for sc in scenarios:
            if not peer_installed(name):
                rec = {"got": "not installed", "seconds": None, "lost": "-", "usable": "-"}
            else:
                rec = run_one(name, sc)
            rec.update({"impl": LABELS.get(name, name), "scenario": sc})
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
