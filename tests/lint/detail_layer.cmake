# Fails when a header under include/mproc/detail/ includes a public header other than
# errors.hpp, version.hpp and serialization (issue 16: detail/ is a lower layer, so a
# public header may build on any of it and no cycle can form through it).
#   cmake -DMPROC_INCLUDE_DIR=<repo>/include -P detail_layer.cmake
if(NOT MPROC_INCLUDE_DIR)
  message(FATAL_ERROR "set MPROC_INCLUDE_DIR")
endif()
set(_root "${MPROC_INCLUDE_DIR}/mproc")
file(GLOB_RECURSE _headers "${_root}/detail/*.hpp")
set(_found 0)
foreach(_h IN LISTS _headers)
  get_filename_component(_dir "${_h}" DIRECTORY)
  file(STRINGS "${_h}" _lines REGEX "^[ \t]*#[ \t]*include[ \t]*[\"<]")
  foreach(_line IN LISTS _lines)
    if(_line MATCHES "#[ \t]*include[ \t]*\"([^\"]+)\"")
      get_filename_component(_target "${_dir}/${CMAKE_MATCH_1}" ABSOLUTE)
    elseif(_line MATCHES "#[ \t]*include[ \t]*<(mproc/[^>]+)>")
      set(_target "${MPROC_INCLUDE_DIR}/${CMAKE_MATCH_1}")
    else()
      continue()  # a system header
    endif()
    file(RELATIVE_PATH _rel "${_root}" "${_target}")
    if(_rel MATCHES "^detail/" OR _rel MATCHES "^(errors|version|serialization)\\.hpp$" OR
       _rel MATCHES "^serialization/")
      continue()
    endif()
    file(RELATIVE_PATH _from "${_root}" "${_h}")
    message("${_from}: includes the public header ${_rel}: detail/ may include only "
            "detail/, errors.hpp, version.hpp and serialization")
    math(EXPR _found "${_found} + 1")
  endforeach()
endforeach()
if(_found)
  message(FATAL_ERROR "${_found} include(s) of public headers from detail/")
endif()
list(LENGTH _headers _n)
message(STATUS "${_n} headers under detail/ include no public header but errors, version and serialization")
