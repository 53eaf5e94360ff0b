// Force-included into mlx-c's C++ sources on toolchains without <format>
// (GCC 12). mlx-c only uses std::format for error messages with `{}`
// placeholders, so a minimal substitute is enough.
#pragma once
#ifdef __cplusplus
#if __has_include(<format>)
#include <format>
#endif
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
inline void mlxsys_format_into(std::ostringstream& out, std::string_view fmt) {
  out << fmt;
}
template <typename T, typename... Rest>
void mlxsys_format_into(std::ostringstream& out, std::string_view fmt,
                        const T& first, const Rest&... rest) {
  auto at = fmt.find("{}");
  if (at == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, at) << first;
  mlxsys_format_into(out, fmt.substr(at + 2), rest...);
}
template <typename... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream out;
  mlxsys_format_into(out, fmt, args...);
  return out.str();
}
}  // namespace std
#endif
#endif
