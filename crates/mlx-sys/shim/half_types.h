// mlx-c's half.h only defines float16_t/bfloat16_t on ARM, but mlx-rs calls
// the float16/bfloat16 accessors on every platform. Off ARM, give C++ the
// MLX types and bindgen (C) ABI-compatible 16-bit types.
#pragma once
#if !(defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC) || defined(__aarch64__))
#define HAS_FLOAT16
#define HAS_BFLOAT16
#ifdef __cplusplus
#include "mlx/types/half_types.h"
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#else
#include <stdint.h>
typedef _Float16 float16_t;
typedef uint16_t bfloat16_t;
#endif
#endif
