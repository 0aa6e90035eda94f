// Library version. CMake checks these against project(VERSION) at configure time.
#pragma once

#define MPROC_VERSION_MAJOR 0
#define MPROC_VERSION_MINOR 1
#define MPROC_VERSION_PATCH 0
// Single integer for #if comparisons: MMmmpp.
#define MPROC_VERSION (MPROC_VERSION_MAJOR * 10000 + MPROC_VERSION_MINOR * 100 + MPROC_VERSION_PATCH)

#define MPROC_DETAIL_STR_(x) #x
#define MPROC_DETAIL_STR(x) MPROC_DETAIL_STR_(x)

namespace mproc {
inline constexpr int version_major = MPROC_VERSION_MAJOR;
inline constexpr int version_minor = MPROC_VERSION_MINOR;
inline constexpr int version_patch = MPROC_VERSION_PATCH;
inline constexpr const char version_string[] =
    MPROC_DETAIL_STR(MPROC_VERSION_MAJOR) "." MPROC_DETAIL_STR(MPROC_VERSION_MINOR) "." MPROC_DETAIL_STR(
        MPROC_VERSION_PATCH);
}  // namespace mproc
