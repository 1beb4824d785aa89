/* npuq's C ABI: the NPU's integer arithmetic (docs/arithmetic.md) and whole NPU programs
 * (docs/program.md), callable from C, C++, SystemVerilog DPI-C or any FFI.
 *
 * Reference: docs/c_api.md. Link: `cc app.c $(npuq config --cflags --libs)`.
 *
 * Conventions
 *  - Every function returns an npuq_status. NPUQ_OK is 0; on any other status the outputs are untouched
 *    or unspecified and npuq_last_error() holds a one-line message naming the argument at fault. No
 *    C++ exception crosses this boundary; a bad argument is never a crash.
 *  - Arrays are C-contiguous, NHWC for activations, OHWI for conv weights (docs/ops.md). Every buffer
 *    comes with its element count, which must equal what the shape implies (NPUQ_INVALID_ARGUMENT
 *    otherwise): a wrong size is reported, never read past.
 *  - threads: 0 means npuq's default (all cores); otherwise 1..256. Results never depend on it.
 *  - Thread safety: every function may be called from several threads at once. Objects (plans,
 *    programs, runs) are immutable after creation and may be shared; the error message is per thread.
 *  - The outputs are bit for bit those of npuq's Python API and of its scalar reference kernels.
 */
#ifndef NPUQ_C_API_H
#define NPUQ_C_API_H

#include <stdint.h>

#if defined(__GNUC__)
#define NPUQ_API __attribute__((visibility("default")))
#else
#define NPUQ_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. A library with another value may have other struct layouts:
 * call npuq_check_abi(NPUQ_ABI_VERSION) once before anything else. */
#define NPUQ_ABI_VERSION 1

typedef enum npuq_status {
  NPUQ_OK = 0,
  NPUQ_INVALID_ARGUMENT = 1, /* a NULL pointer, a wrong size, a value out of range */
  NPUQ_ACCUMULATOR_OVERFLOW = 2, /* an int32 accumulator overflowed under NPUQ_OVERFLOW_RAISE */
  NPUQ_PROGRAM_ERROR = 3,    /* a program file failed validation */
  NPUQ_IO_ERROR = 4,         /* a file could not be read */
  NPUQ_OUT_OF_MEMORY = 5,
  NPUQ_VERSION_MISMATCH = 6, /* npuq_check_abi: the caller was compiled against another ABI */
  NPUQ_INTERNAL_ERROR = 7    /* a bug in npuq: please report it with the message */
} npuq_status;

/* The values of the int32_t `rounding` and `overflow` arguments and fields. They are passed as int32_t, not
 * as the enum types: a C caller may store any int in an enum, which C++ may not read back. */
typedef enum npuq_rounding { NPUQ_ROUNDING_DOUBLE = 0, NPUQ_ROUNDING_SINGLE = 1 } npuq_rounding;
typedef enum npuq_overflow {
  NPUQ_OVERFLOW_RAISE = 0,
  NPUQ_OVERFLOW_SATURATE = 1,
  NPUQ_OVERFLOW_WRAP = 2
} npuq_overflow;

/* ---- versions and errors ------------------------------------------------------------------------ */

NPUQ_API uint32_t npuq_abi_version(void);
/* NPUQ_VERSION_MISMATCH (with a message naming both versions) unless caller_abi_version equals the
 * library's. */
NPUQ_API npuq_status npuq_check_abi(uint32_t caller_abi_version);
NPUQ_API uint32_t npuq_arithmetic_version(void); /* docs/arithmetic.md's version: that of programs */
NPUQ_API const char* npuq_version(void);         /* the package version, e.g. "0.1.0" */
NPUQ_API const char* npuq_isa(void);             /* the CPU kernel family in use: "avx512_vnni", ... */
/* The message of this thread's last failed call ("" after a success). Valid until this thread's next
 * npuq call. */
NPUQ_API const char* npuq_last_error(void);
NPUQ_API const char* npuq_status_name(npuq_status status);

/* ---- requantization (arithmetic.md 2, 3) ------------------------------------------------------- */

/* real > 0 as M0 * 2^(exponent - 31), M0 in [2^30, 2^31). A real too small flushes to (0, 0) and
 * returns NPUQ_OK; a real too large, zero, negative or not finite is NPUQ_INVALID_ARGUMENT. */
NPUQ_API npuq_status npuq_quantize_multiplier(double real, int32_t* multiplier, int32_t* exponent);

/* One value: clamp(z + round(acc * M0 * 2^(e - s - 31)), act_min, act_max), the rounding of
 * arithmetic.md 3 (the per-transaction call of a test-bench scoreboard). */
NPUQ_API npuq_status npuq_requantize_one(int32_t acc, int32_t multiplier, int32_t exponent, uint32_t shift,
                                         int32_t zero_point, int32_t act_min, int32_t act_max, int32_t rounding,
                                         int8_t* out);

/* The requantization of a layer's channels. multiplier/exponent hold param_count values: 1 (per layer)
 * or one per channel. shift: NULL (all 0) or one 4-bit WESS shift per channel. */
typedef struct npuq_requant {
  const int32_t* multiplier;
  const int32_t* exponent;
  int64_t param_count;
  const uint8_t* shift;
  int32_t zero_point;
  int32_t act_min;
  int32_t act_max;
  int32_t rounding; /* npuq_rounding */
} npuq_requant;

/* acc [rows][channels] int32 -> out [rows][channels] int8. */
NPUQ_API npuq_status npuq_requantize(const int32_t* acc, int64_t rows, int64_t channels, const npuq_requant* r,
                                     int8_t* out, int64_t out_count, int threads);

/* ---- convolution and fully-connected (arithmetic.md 4, 5) --------------------------------------- */

typedef struct npuq_conv2d_params {
  int64_t in_channels, out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, dilation_h, dilation_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t groups;
  int32_t input_zero_point;
  int32_t overflow; /* npuq_overflow */
  npuq_requant requant; /* channels = out_channels */
} npuq_conv2d_params;

/* The output size of a conv on an in_h x in_w input. */
NPUQ_API npuq_status npuq_conv2d_output_size(const npuq_conv2d_params* p, int64_t in_h, int64_t in_w, int64_t* out_h,
                                             int64_t* out_w);

/* A conv layer with its weights packed once for the fast kernels (as npuq.ops.Conv2d). weight: OHWI
 * [out_c][kh][kw][in_c / groups] in [-127, 127]; bias: NULL or [out_c]. The plan copies everything. */
typedef struct npuq_conv2d_plan npuq_conv2d_plan;
NPUQ_API npuq_status npuq_conv2d_plan_create(const npuq_conv2d_params* p, const int8_t* weight, int64_t weight_count,
                                             const int32_t* bias, int64_t bias_count, npuq_conv2d_plan** plan);
NPUQ_API void npuq_conv2d_plan_free(npuq_conv2d_plan* plan); /* NULL is a no-op */
/* x [batch][in_h][in_w][in_c] -> out [batch][out_h][out_w][out_c]. */
NPUQ_API npuq_status npuq_conv2d_plan_run(const npuq_conv2d_plan* plan, const int8_t* x, int64_t batch, int64_t in_h,
                                          int64_t in_w, int64_t x_count, int8_t* out, int64_t out_count, int threads);
/* One call: plan, run, free. */
NPUQ_API npuq_status npuq_conv2d(const npuq_conv2d_params* p, const int8_t* x, int64_t batch, int64_t in_h,
                                 int64_t in_w, int64_t x_count, const int8_t* weight, int64_t weight_count,
                                 const int32_t* bias, int64_t bias_count, int8_t* out, int64_t out_count, int threads);
/* The int32 accumulators before requantization, acc [batch][out_h][out_w][out_c]: bias + sum (x - z) w,
 * after the overflow policy (arithmetic.md 4, 5). p->requant is not used and may be zero. Scalar
 * reference speed: for test vectors, not for inference. */
NPUQ_API npuq_status npuq_conv2d_accumulators(const npuq_conv2d_params* p, const int8_t* x, int64_t batch, int64_t in_h,
                                              int64_t in_w, int64_t x_count, const int8_t* weight, int64_t weight_count,
                                              const int32_t* bias, int64_t bias_count, int32_t* acc, int64_t acc_count);

/* x [batch][in_features], weight [out_features][in_features] -> out [batch][out_features]. */
typedef struct npuq_fc_params {
  int64_t in_features, out_features;
  int32_t input_zero_point;
  int32_t overflow; /* npuq_overflow */
  npuq_requant requant;
} npuq_fc_params;
NPUQ_API npuq_status npuq_fully_connected(const npuq_fc_params* p, const int8_t* x, int64_t batch, int64_t x_count,
                                          const int8_t* weight, int64_t weight_count, const int32_t* bias,
                                          int64_t bias_count, int8_t* out, int64_t out_count, int threads);

/* ---- elementwise ops (arithmetic.md 6, 9, 10, 11) ------------------------------------------------ */

typedef struct npuq_add_params {
  int32_t a_zero_point, a_multiplier, a_exponent;
  int32_t b_zero_point, b_multiplier, b_exponent;
  int32_t out_zero_point, out_multiplier, out_exponent;
  int32_t left_shift; /* 20 in npuq's programs */
  int32_t act_min, act_max;
  int32_t rounding; /* npuq_rounding */
} npuq_add_params;
NPUQ_API npuq_status npuq_add(const npuq_add_params* p, const int8_t* a, const int8_t* b, int64_t count, int8_t* out,
                              int threads);

/* y = table[x + 128]; table has 256 entries. */
NPUQ_API npuq_status npuq_lut(const int8_t* x, int64_t count, const int8_t* table, int8_t* out, int threads);

/* a [batch][positions][channels]; b the same, or [batch][channels] when broadcast_b (the SE scale). */
typedef struct npuq_mul_params {
  int64_t batch, positions, channels;
  int32_t broadcast_b;
  int32_t a_zero_point, b_zero_point, out_zero_point;
  int32_t multiplier, exponent;
  int32_t act_min, act_max;
  int32_t rounding; /* npuq_rounding */
} npuq_mul_params;
NPUQ_API npuq_status npuq_mul(const npuq_mul_params* p, const int8_t* a, int64_t a_count, const int8_t* b,
                              int64_t b_count, int8_t* out, int64_t out_count, int threads);

/* Input i [rows][channels_i] lands at channel offset C_0 + ... + C_{i-1} of out [rows][sum C_i]. */
typedef struct npuq_concat_input {
  const int8_t* data;
  int64_t count; /* rows * channels */
  int64_t channels;
  int32_t zero_point, multiplier, exponent;
} npuq_concat_input;
NPUQ_API npuq_status npuq_concat(const npuq_concat_input* inputs, int32_t input_count, int64_t rows,
                                 int32_t out_zero_point, int32_t rounding, int8_t* out, int64_t out_count, int threads);

/* ---- pooling and resampling (arithmetic.md 7, 12-15) -------------------------------------------- */

typedef struct npuq_pool2d_params {
  int64_t batch, in_h, in_w, channels;
  int64_t kernel_h, kernel_w, stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int32_t count_include_pad; /* average pooling */
  int32_t ceil_mode;         /* max pooling */
  int32_t input_zero_point;  /* average pooling */
  int32_t act_min, act_max;  /* average pooling */
} npuq_pool2d_params;
/* out_h, out_w of the pooling (max pooling honours ceil_mode). */
NPUQ_API npuq_status npuq_pool2d_output_size(const npuq_pool2d_params* p, int max_pool, int64_t* out_h, int64_t* out_w);
NPUQ_API npuq_status npuq_avg_pool2d(const npuq_pool2d_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                                     int64_t out_count, int threads);
NPUQ_API npuq_status npuq_max_pool2d(const npuq_pool2d_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                                     int64_t out_count, int threads);

typedef struct npuq_mean_params {
  int64_t batch, in_h, in_w, channels;
  int32_t input_zero_point, output_zero_point;
  int32_t multiplier, exponent;
  int32_t act_min, act_max;
  int32_t tflite_rounding;
  int32_t rounding; /* npuq_rounding */
} npuq_mean_params;
/* x [batch][in_h][in_w][channels] -> out [batch][channels]. */
NPUQ_API npuq_status npuq_mean(const npuq_mean_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                               int64_t out_count, int threads);

/* x [batch][in_h][in_w][channels] -> out [batch][in_h f_h][in_w f_w][channels]; factors 1..64.
 * bilinear: 0 nearest, 1 bilinear (half-pixel centres, exact integer weights, arithmetic.md 13). */
NPUQ_API npuq_status npuq_upsample(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t channels,
                                   int64_t x_count, int64_t factor_h, int64_t factor_w, int32_t bilinear,
                                   int32_t zero_point, int8_t* out, int64_t out_count, int threads);

/* ---- data movement (arithmetic.md 12) ---------------------------------------------------------- */

/* x [rows][channels]: output channel j * groups + i is input channel i * (channels / groups) + j. */
NPUQ_API npuq_status npuq_channel_shuffle(const int8_t* x, int64_t rows, int64_t channels, int64_t groups, int8_t* out,
                                          int64_t count, int threads);
/* x [rows][channels] -> out [rows][end - begin]: channels begin .. end - 1. */
NPUQ_API npuq_status npuq_channel_slice(const int8_t* x, int64_t rows, int64_t channels, int64_t begin, int64_t end,
                                        int8_t* out, int64_t out_count);
/* x [batch][in_h][in_w][channels] -> out [batch][in_h + top + bottom][in_w + left + right][channels],
 * new positions = value. */
NPUQ_API npuq_status npuq_pad(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t channels,
                              int64_t x_count, int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                              int32_t value, int8_t* out, int64_t out_count);

/* ---- whole programs (docs/program.md) ----------------------------------------------------------- */

typedef struct npuq_program npuq_program;
typedef struct npuq_run npuq_run;

#define NPUQ_LOAD_SKIP_DIGEST 1u /* accept a program whose checksum does not match (edited on purpose) */
#define NPUQ_MAX_DIMS 3          /* per-image shapes: (H, W, C) or (K,) */
#define NPUQ_MAX_OP_INPUTS 64

/* Load and validate a program file. Any problem (a corrupt or hostile file, a format or arithmetic
 * version this library does not know) is NPUQ_PROGRAM_ERROR / NPUQ_IO_ERROR with the file, op and field
 * in the message; nothing is allocated then. */
NPUQ_API npuq_status npuq_program_load(const char* path, uint32_t flags, npuq_program** program);
NPUQ_API void npuq_program_free(npuq_program* program); /* NULL is a no-op */

typedef struct npuq_value_info {
  int32_t ndim;                  /* 3 for (H, W, C), 1 for (K,) */
  int64_t shape[NPUQ_MAX_DIMS];  /* per image */
  int64_t count;                 /* elements per image */
  int32_t zero_point;
  double scale;
} npuq_value_info;

typedef struct npuq_op_info {
  const char* name;  /* valid while the program lives */
  const char* kind;  /* "conv2d", "add", ... */
  int32_t input_count;
  int64_t inputs[NPUQ_MAX_OP_INPUTS]; /* op indices; -1 is the program input */
  npuq_value_info output;
} npuq_op_info;

NPUQ_API npuq_status npuq_program_input_info(const npuq_program* program, npuq_value_info* info);
NPUQ_API npuq_status npuq_program_op_count(const npuq_program* program, int64_t* count);
NPUQ_API npuq_status npuq_program_op_info(const npuq_program* program, int64_t op_index, npuq_op_info* info);
NPUQ_API npuq_status npuq_program_output_op(const npuq_program* program, int64_t* op_index);
/* -1 when no op has that name. */
NPUQ_API npuq_status npuq_program_find_op(const npuq_program* program, const char* name, int64_t* op_index);

/* Run the program on x [batch][input shape] int8, keeping every op's output in the run. */
NPUQ_API npuq_status npuq_program_run(const npuq_program* program, const int8_t* x, int64_t batch, int64_t x_count,
                                      int threads, npuq_run** run);
NPUQ_API void npuq_run_free(npuq_run* run); /* NULL is a no-op */
/* Op op_index's output [batch][its shape] (op_index -1: the program input), owned by the run. */
NPUQ_API npuq_status npuq_run_value(const npuq_run* run, int64_t op_index, const int8_t** data, int64_t* count);
/* The program's output (that of npuq_program_output_op). */
NPUQ_API npuq_status npuq_run_output(const npuq_run* run, const int8_t** data, int64_t* count);

/* Run one op alone on given inputs (one per op input, in order, each [batch][that value's shape]). */
NPUQ_API npuq_status npuq_program_run_op(const npuq_program* program, int64_t op_index, const int8_t* const* inputs,
                                         const int64_t* input_counts, int32_t input_count, int64_t batch, int8_t* out,
                                         int64_t out_count, int threads);

#ifdef __cplusplus
}
#endif

#endif /* NPUQ_C_API_H */
