# Builds and runs tests/consumer the way a user would, in one of three modes:
#   package:      cmake --install into a fresh prefix, then find_package(mproc CONFIG),
#                 and a Makefile build with the flags of the installed mproc.pc
#   compiled:     the same with mproc built as a compiled library (MPROC_COMPILED=ON)
#   subdirectory: add_subdirectory(<mproc source tree>)
# Run by ctest as: cmake -DCONSUMER_MODE=... (see tests/CMakeLists.txt) -P run_consumer.cmake
cmake_minimum_required(VERSION 3.21)

foreach(_var MPROC_SOURCE_DIR MPROC_BINARY_DIR CONSUMER_SOURCE_DIR CONSUMER_WORK_DIR
             CONSUMER_GENERATOR CONSUMER_MODE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_consumer.cmake: ${_var} not set")
  endif()
endforeach()

set(_work "${CONSUMER_WORK_DIR}/${CONSUMER_MODE}")
set(_build "${_work}/build")
set(_prefix "${_work}/prefix")
file(REMOVE_RECURSE "${_work}")
file(MAKE_DIRECTORY "${_work}")

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer (${CONSUMER_MODE}): ${what} failed (${_rc}):\n${_out}")
  endif()
  message(STATUS "consumer (${CONSUMER_MODE}): ${what} ok")
  set(run_step_output "${_out}" PARENT_SCOPE)
endfunction()

set(_config_args)
if(CONSUMER_CONFIG)
  set(_config_args --config "${CONSUMER_CONFIG}")
endif()
set(_build_type RelWithDebInfo)
if(CONSUMER_CONFIG)
  set(_build_type "${CONSUMER_CONFIG}")
endif()

set(_configure "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${_build}"
    -G "${CONSUMER_GENERATOR}" "-DCMAKE_BUILD_TYPE=${_build_type}"
    -DCONSUMER_MODE=${CONSUMER_MODE}
    # Only the prefix we just installed may satisfy find_package(mproc).
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(CONSUMER_CXX_COMPILER)
  list(APPEND _configure "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
endif()

if(CONSUMER_MODE STREQUAL "compiled")
  # mproc itself built again as a compiled library (MPROC_COMPILED=ON), library only,
  # then installed and used exactly as the header-only package is below.
  set(_mproc_build "${_work}/mproc-build")
  set(_mproc_configure "${CMAKE_COMMAND}" -S "${MPROC_SOURCE_DIR}" -B "${_mproc_build}"
      -G "${CONSUMER_GENERATOR}" "-DCMAKE_BUILD_TYPE=${_build_type}" -DMPROC_COMPILED=ON
      -DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_EXAMPLES=OFF -DMPROC_BUILD_BENCHMARKS=OFF)
  if(CONSUMER_CXX_COMPILER)
    list(APPEND _mproc_configure "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
  endif()
  run_step("configure mproc (MPROC_COMPILED=ON)" ${_mproc_configure})
  run_step("build libmproc" "${CMAKE_COMMAND}" --build "${_mproc_build}" ${_config_args})
  set(MPROC_BINARY_DIR "${_mproc_build}")
endif()

if(CONSUMER_MODE STREQUAL "package" OR CONSUMER_MODE STREQUAL "compiled")
  run_step("cmake --install"
    "${CMAKE_COMMAND}" --install "${MPROC_BINARY_DIR}" --prefix "${_prefix}" ${_config_args})
  if(NOT EXISTS "${_prefix}/include/mproc/mproc.hpp")
    message(FATAL_ERROR "consumer (package): ${_prefix}/include/mproc/mproc.hpp was not installed")
  endif()
  if(CONSUMER_MODE STREQUAL "compiled")
    file(GLOB _libs "${_prefix}/*/libmproc.*" "${_prefix}/*/*/libmproc.*")
    if(NOT _libs)
      message(FATAL_ERROR "consumer (compiled): no libmproc was installed under ${_prefix}")
    endif()
  endif()
  list(APPEND _configure "-DCMAKE_PREFIX_PATH=${_prefix}" "-DEXPECTED_PREFIX=${_prefix}")
elseif(CONSUMER_MODE STREQUAL "subdirectory")
  list(APPEND _configure "-DMPROC_SOURCE_DIR=${MPROC_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown CONSUMER_MODE '${CONSUMER_MODE}'")
endif()

# The README's opening program and its output: the first ```cpp block and the
# ```text block after it. Built by the consumer and checked here, so the README
# cannot drift from what the library does.
file(READ "${MPROC_SOURCE_DIR}/README.md" _readme)
string(FIND "${_readme}" "```cpp\n" _code_at)
if(_code_at EQUAL -1)
  message(FATAL_ERROR "README.md has no ```cpp block")
endif()
math(EXPR _code_at "${_code_at} + 7")
string(SUBSTRING "${_readme}" ${_code_at} -1 _rest)
string(FIND "${_rest}" "\n```\n" _code_end)
string(SUBSTRING "${_rest}" 0 ${_code_end} _readme_program)
string(SUBSTRING "${_rest}" ${_code_end} -1 _rest)
string(FIND "${_rest}" "```text\n" _out_at)
if(_out_at EQUAL -1)
  message(FATAL_ERROR "README.md has no ```text output block after its program")
endif()
math(EXPR _out_at "${_out_at} + 8")
string(SUBSTRING "${_rest}" ${_out_at} -1 _rest)
string(FIND "${_rest}" "```\n" _out_end)
string(SUBSTRING "${_rest}" 0 ${_out_end} _readme_expected)
file(WRITE "${_work}/readme_program.cpp" "${_readme_program}\n")
list(APPEND _configure "-DREADME_PROGRAM=${_work}/readme_program.cpp")

run_step("configure" ${_configure})
run_step("build" "${CMAKE_COMMAND}" --build "${_build}" ${_config_args})

set(_exe "${_build}/consumer")
if(NOT EXISTS "${_exe}" AND CONSUMER_CONFIG)
  set(_exe "${_build}/${CONSUMER_CONFIG}/consumer")
endif()
if(NOT EXISTS "${_exe}")
  message(FATAL_ERROR "consumer (${CONSUMER_MODE}): built program not found under ${_build}")
endif()
run_step("run" "${_exe}")
message("${run_step_output}")
if(NOT run_step_output MATCHES "consumer ok")
  message(FATAL_ERROR "consumer (${CONSUMER_MODE}): program did not report success")
endif()

# The README program's stdout must be exactly the README's output block.
execute_process(COMMAND "${_build}/readme" RESULT_VARIABLE _rc
                OUTPUT_VARIABLE _readme_actual TIMEOUT 120)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "consumer (${CONSUMER_MODE}): README program failed (${_rc}):\n${_readme_actual}")
endif()
if(NOT _readme_actual STREQUAL _readme_expected)
  message(FATAL_ERROR "consumer (${CONSUMER_MODE}): README program output differs from README.md\n"
                      "--- README.md says:\n${_readme_expected}--- the program printed:\n${_readme_actual}")
endif()
message(STATUS "consumer (${CONSUMER_MODE}): README program output matches README.md")

# Without CMake: a Makefile that takes every flag from the installed mproc.pc builds
# the README program again, and it must print the same.
if(CONSUMER_MODE STREQUAL "package" OR CONSUMER_MODE STREQUAL "compiled")
  find_program(_make NAMES make gmake)
  find_program(_pkg_config NAMES pkg-config pkgconf)
  if(NOT _make OR NOT _pkg_config)
    message(FATAL_ERROR "consumer (package): make and pkg-config are needed for the pkg-config check")
  endif()
  file(GLOB _pc_files "${_prefix}/*/pkgconfig/mproc.pc" "${_prefix}/*/*/pkgconfig/mproc.pc")
  list(LENGTH _pc_files _n_pc)
  if(NOT _n_pc EQUAL 1)
    message(FATAL_ERROR "consumer (package): expected one installed mproc.pc under ${_prefix}, found: ${_pc_files}")
  endif()
  get_filename_component(_pc_dir "${_pc_files}" DIRECTORY)
  # PKG_CONFIG_PATH is searched first; the -I check below makes sure it answered.
  set(_pc_env "PKG_CONFIG_PATH=${_pc_dir}")
  run_step("pkg-config --cflags --libs mproc"
    "${CMAKE_COMMAND}" -E env ${_pc_env} "${_pkg_config}" --cflags --libs mproc)
  string(STRIP "${run_step_output}" _pc_flags)
  message(STATUS "consumer (package): pkg-config says: ${_pc_flags}")
  string(FIND " ${_pc_flags}" " -I${_prefix}/" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "consumer (package): mproc.pc does not point at ${_prefix}: ${_pc_flags}")
  endif()
  if(CONSUMER_MODE STREQUAL "compiled" AND NOT _pc_flags MATCHES "-DMPROC_HEADER_ONLY=0.* -lmproc ")
    message(FATAL_ERROR "consumer (compiled): mproc.pc does not name libmproc and MPROC_HEADER_ONLY=0: ${_pc_flags}")
  endif()
  set(_make_cxx "${CONSUMER_CXX_COMPILER}")
  if(NOT _make_cxx)
    set(_make_cxx c++)
  endif()
  file(MAKE_DIRECTORY "${_work}/make")
  run_step("make with pkg-config"
    "${CMAKE_COMMAND}" -E env ${_pc_env}
    "${_make}" -C "${_work}/make" -f "${CONSUMER_SOURCE_DIR}/Makefile"
    "CXX=${_make_cxx}" "PKG_CONFIG=${_pkg_config}"
    "PROGRAM=${_work}/readme_program.cpp" "OUT=readme")
  execute_process(COMMAND "${_work}/make/readme" RESULT_VARIABLE _rc
                  OUTPUT_VARIABLE _make_actual TIMEOUT 120)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer (package): README program built by make failed (${_rc}):\n${_make_actual}")
  endif()
  if(NOT _make_actual STREQUAL _readme_expected)
    message(FATAL_ERROR "consumer (package): README program built by make prints something else\n"
                        "--- README.md says:\n${_readme_expected}--- the program printed:\n${_make_actual}")
  endif()
  message(STATUS "consumer (package): README program built with pkg-config flags matches README.md")
endif()
