# Every public header compiles on its own in the compiled mode (MPROC_HEADER_ONLY=0),
# where the headers declare what libmproc defines: a header that leans on a body (or on
# an include) only its *_impl.hpp brings fails here, not in a user's build.
#   cmake -DMPROC_INCLUDE_DIR=<repo>/include -DCXX=<compiler> -P headers_alone.cmake
foreach(_var MPROC_INCLUDE_DIR CXX)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "headers_alone.cmake: ${_var} not set")
  endif()
endforeach()
file(GLOB _headers RELATIVE "${MPROC_INCLUDE_DIR}" "${MPROC_INCLUDE_DIR}/mproc/*.hpp")
list(REMOVE_ITEM _headers "mproc/mpi.hpp")  # needs MPI's include path; tests/mpi builds it
set(_failed "")
foreach(_h IN LISTS _headers)
  execute_process(
    COMMAND "${CXX}" -std=c++20 -fsyntax-only -DMPROC_HEADER_ONLY=0 -I "${MPROC_INCLUDE_DIR}"
            -x c++ -include "${_h}" /dev/null
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    string(APPEND _failed "--- ${_h}:\n${_out}\n")
  endif()
endforeach()
if(_failed)
  message(FATAL_ERROR "headers that do not compile alone with MPROC_HEADER_ONLY=0:\n${_failed}")
endif()
list(LENGTH _headers _n)
message(STATUS "${_n} public headers compile alone in the compiled mode")
