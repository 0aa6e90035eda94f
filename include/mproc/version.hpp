/// \file
/// Library version. CMake checks these against project(VERSION) at configure time.
#pragma once

/// Major version: incompatible API changes.
#define MPROC_VERSION_MAJOR 0
/// Minor version: additions.
#define MPROC_VERSION_MINOR 1
/// Patch version: fixes.
#define MPROC_VERSION_PATCH 0
/// Single integer for `#if` comparisons: MMmmpp.
#define MPROC_VERSION (MPROC_VERSION_MAJOR * 10000 + MPROC_VERSION_MINOR * 100 + MPROC_VERSION_PATCH)

/// \cond MPROC_INTERNAL
#define MPROC_DETAIL_STR_(x) #x
#define MPROC_DETAIL_STR(x) MPROC_DETAIL_STR_(x)
/// \endcond

namespace mproc {
inline constexpr int version_major = MPROC_VERSION_MAJOR;  ///< MPROC_VERSION_MAJOR
inline constexpr int version_minor = MPROC_VERSION_MINOR;  ///< MPROC_VERSION_MINOR
inline constexpr int version_patch = MPROC_VERSION_PATCH;  ///< MPROC_VERSION_PATCH
/// The version as text, e.g. "0.1.0".
inline constexpr const char version_string[] =
    MPROC_DETAIL_STR(MPROC_VERSION_MAJOR) "." MPROC_DETAIL_STR(MPROC_VERSION_MINOR) "." MPROC_DETAIL_STR(
        MPROC_VERSION_PATCH);
}  // namespace mproc

/// 1 (the default): header-only, everything compiles in the files that include mproc.
/// 0: the Pool engine and the other code that does not depend on a program's types
/// come from the compiled library (libmproc, src/mproc.cpp); mproc::mproc built with
/// CMake's MPROC_COMPILED=ON sets it, as does mproc.pc of such an install.
#ifndef MPROC_HEADER_ONLY
#define MPROC_HEADER_ONLY 1
#endif

/// How the library's own functions are defined (internal). Their headers declare them
/// and, in the header-only mode, include their bodies (the *_impl.hpp beside them) as
/// inline definitions; in the compiled mode user files see the declarations only and
/// src/mproc.cpp compiles the bodies once, as ordinary functions (as fmt's FMT_FUNC).
#if MPROC_HEADER_ONLY
#define MPROC_FUNC inline
#else
#define MPROC_FUNC
#endif
