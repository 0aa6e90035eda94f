// Sending boost::multiprecision::cpp_int values: Boost's serialize() for cpp_int plus
// the Boost bridge (which tells cpp_int that mproc's archives are binary ones).
// Including <boost/multiprecision/cpp_int/serialize.hpp> anywhere works as well.
#pragma once

#include <boost/multiprecision/cpp_int.hpp>
#include <boost/multiprecision/cpp_int/serialize.hpp>

#include "../serialization/boost.hpp"
