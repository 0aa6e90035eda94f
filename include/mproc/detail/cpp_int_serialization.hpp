// Boost.Multiprecision's cpp_int picks its archive layout by archive type: limbs as raw
// bytes for boost::archive::binary_[io]archive, a byte-by-byte layout for any other
// archive. mproc writes Boost values with binary_oarchive but reads them with its own
// bounded_iarchive (same binary layout), which cpp_int would take for a non-binary
// archive and misread. This tells cpp_int that bounded_iarchive is binary.
// Include it (instead of <boost/multiprecision/cpp_int/serialize.hpp>) before sending
// cpp_int values.
#pragma once

#include <boost/multiprecision/cpp_int.hpp>
#include <boost/multiprecision/cpp_int/serialize.hpp>

#include "../serialization.hpp"

namespace boost::serialization::cpp_int_detail {
template <>
struct is_binary_archive<mproc::detail::bounded_iarchive> : public mpl::true_ {};
}  // namespace boost::serialization::cpp_int_detail
