# Fails when a raw system call appears in a header outside include/mproc/detail/posix/,
# keeping true what detail/posix/posix.hpp says: every platform specific call lives
# there, so the rest reads as plain C++ (issue 16). The list of calls is the one
# the issue counted with grep, widened to every system call the headers made; what
# stays outside is libc that calls no kernel (strsignal), the resolver
# (getaddrinfo) and the dynamic loader (dl_iterate_phdr); process-shared mutexes
# are detail/posix/robust_mutex.hpp's alone. A call written `::name(`
# counts, a member or a qualified name (`x.close(`, `std::fstat(`) does not.
#   cmake -DMPROC_INCLUDE_DIR=<repo>/include -P posix_calls.cmake
if(NOT MPROC_INCLUDE_DIR)
  message(FATAL_ERROR "set MPROC_INCLUDE_DIR")
endif()
set(_calls "read|write|close|open|fork|mmap|munmap|socket|connect|accept|bind|listen|poll|ppoll|waitpid|kill|pipe2?|dup2?|dup3|fcntl|ftruncate|fstat|memfd_create|shm_open|shm_unlink|sendmsg|recvmsg|send|recv|execve?|_exit|prctl|signalfd|eventfd|syscall|unlink|getpid|setsid|sigaction|pthread_sigmask|sigprocmask|clock_gettime|nanosleep|sched_yield|setsockopt|getsockopt|socketpair|epoll_[a-z]+|getrandom|getppid|setpgid|geteuid|gettid|waitid|on_exit|sched_getaffinity|isatty|readlink|sysconf|madvise|close_range|accept4|shutdown|getsockname|signal|mkdtemp|access|pthread_getattr_np|pthread_attr_[a-z]+|pthread_mutex(attr)?_[a-z]+")
set(_raw "(^|[^a-zA-Z_:.>])::(${_calls})\\(")
file(GLOB_RECURSE _headers RELATIVE "${MPROC_INCLUDE_DIR}" "${MPROC_INCLUDE_DIR}/*.hpp")
set(_found 0)
foreach(_h IN LISTS _headers)
  if(_h MATCHES "(^|/)detail/posix/")
    continue()
  endif()
  file(STRINGS "${MPROC_INCLUDE_DIR}/${_h}" _lines)
  set(_n 0)
  foreach(_line IN LISTS _lines)
    math(EXPR _n "${_n} + 1")
    if(_line MATCHES "${_raw}")
      message("${_h}:${_n}: raw system call ::${CMAKE_MATCH_2}(: add or use a helper in detail/posix/")
      math(EXPR _found "${_found} + 1")
    endif()
  endforeach()
endforeach()
if(_found GREATER 0)
  message(FATAL_ERROR "${_found} line(s) with a raw system call outside include/mproc/detail/posix/")
endif()
message(STATUS "no raw system call outside include/mproc/detail/posix/")
