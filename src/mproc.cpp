// The compiled part of mproc (CMake: MPROC_COMPILED=ON): the code that does not depend
// on a program's own types, compiled once here rather than in every file that includes
// mproc. Files built with MPROC_HEADER_ONLY=0 (mproc::mproc sets it) declare these
// instantiations `extern` and link this file's.
#include <mproc/mproc.hpp>

#if MPROC_HEADER_ONLY
#error "src/mproc.cpp is the compiled library: build it with MPROC_HEADER_ONLY=0"
#endif

namespace mproc {
template class basic_pool<dynamic_policy>;
}  // namespace mproc
