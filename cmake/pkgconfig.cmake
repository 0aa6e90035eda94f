# Writes ${PROJECT_BINARY_DIR}/mproc.pc from cmake/mproc.pc.in: the flags of
# mproc::mproc's usage requirements, spelled for pkg-config.

# Paths in the file are relative to its own directory (${pcfiledir}), so
# `cmake --install --prefix <anywhere>` gives a working file.
if(IS_ABSOLUTE "${MPROC_PKGCONFIG_INSTALL_DIR}")
  message(FATAL_ERROR "MPROC_PKGCONFIG_INSTALL_DIR must be relative to the install prefix")
endif()
file(RELATIVE_PATH MPROC_PC_PREFIX_FROM_PCDIR "/prefix/${MPROC_PKGCONFIG_INSTALL_DIR}" "/prefix")
string(REGEX REPLACE "/$" "" MPROC_PC_PREFIX_FROM_PCDIR "${MPROC_PC_PREFIX_FROM_PCDIR}")
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(MPROC_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(MPROC_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# Include directories of the dependencies, unless the compiler searches them anyway.
set(_mproc_pc_incdirs ${Boost_INCLUDE_DIRS} ${OPENSSL_INCLUDE_DIR})
set(MPROC_PC_EXTRA_CFLAGS "")
list(REMOVE_DUPLICATES _mproc_pc_incdirs)
foreach(_dir IN LISTS _mproc_pc_incdirs)
  if(_dir AND NOT _dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
    string(APPEND MPROC_PC_EXTRA_CFLAGS " -I${_dir}")
  endif()
endforeach()

# A library file becomes -L<dir> (unless the linker searches it anyway) -l<name>.
set(_mproc_pc_libdirs "")
set(_mproc_pc_libnames "")
get_target_property(_mproc_boost_ser Boost::serialization LOCATION)
foreach(_lib IN ITEMS "${_mproc_boost_ser}" "${OPENSSL_CRYPTO_LIBRARY}")
  if(NOT _lib)
    message(FATAL_ERROR "mproc.pc: a library mproc needs has no known location")
  endif()
  get_filename_component(_dir "${_lib}" DIRECTORY)
  get_filename_component(_file "${_lib}" NAME)
  if(NOT _file MATCHES "^lib([^.]+)\\.(so|a)")
    message(FATAL_ERROR "mproc.pc: cannot name ${_lib} for the linker")
  endif()
  list(APPEND _mproc_pc_libnames "-l${CMAKE_MATCH_1}")
  if(NOT _dir IN_LIST CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES)
    list(APPEND _mproc_pc_libdirs "-L${_dir}")
  endif()
endforeach()
list(REMOVE_DUPLICATES _mproc_pc_libdirs)
# -pthread as for Threads::Threads (THREADS_PREFER_PTHREAD_FLAG); librt as for mproc::mproc.
set(_mproc_pc_libs ${_mproc_pc_libdirs} ${_mproc_pc_libnames} -pthread)
if(MPROC_COMPILED)
  # The compiled library first: it needs the others.
  if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
    set(_mproc_pc_own_libdir "${CMAKE_INSTALL_LIBDIR}")
  else()
    set(_mproc_pc_own_libdir "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  endif()
  list(PREPEND _mproc_pc_libs "-L${_mproc_pc_own_libdir}" -lmproc)
  string(APPEND MPROC_PC_EXTRA_CFLAGS " -DMPROC_HEADER_ONLY=0")
endif()
if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  list(APPEND _mproc_pc_libs -lrt)
endif()
list(JOIN _mproc_pc_libs " " MPROC_PC_LIBS)

configure_file("${CMAKE_CURRENT_LIST_DIR}/mproc.pc.in" "${PROJECT_BINARY_DIR}/mproc.pc" @ONLY)
