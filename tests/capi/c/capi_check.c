/* A C program built against the installed npuq.h and libnpuq by tests/capi/test_c_program.py, which
 * compares what it writes with npuq's Python API. Plain C99: it also proves that the header is C.
 *
 *   capi_check version
 *   capi_check conv2d DIR     DIR/params.txt + x.bin, weight.bin, bias.bin, multiplier.bin, exponent.bin,
 *                             shift.bin -> DIR/out.bin, DIR/acc.bin
 *   capi_check program FILE X.bin BATCH THREADS OUTDIR   every op's output -> OUTDIR/op_<index>.bin
 *   capi_check errors         calls with bad arguments; prints "<status name> <message>" per call
 */
#include <npuq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char* what) {
  fprintf(stderr, "capi_check: %s\n", what);
  exit(3);
}

static void check(npuq_status s, const char* call) {
  if (s != NPUQ_OK) {
    fprintf(stderr, "capi_check: %s: %s: %s\n", call, npuq_status_name(s), npuq_last_error());
    exit(1);
  }
}

/* The whole file DIR/NAME, or NAME when DIR is "" (NULL with *n = 0 when it is missing and optional). */
static void* read_file(const char* dir, const char* name, long* n, int optional) {
  char path[4096];
  FILE* f;
  void* data;
  if (dir[0]) snprintf(path, sizeof path, "%s/%s", dir, name);
  else snprintf(path, sizeof path, "%s", name);
  f = fopen(path, "rb");
  *n = 0;
  if (!f) {
    if (optional) return NULL;
    die(path);
  }
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  fseek(f, 0, SEEK_SET);
  data = malloc(*n > 0 ? (size_t)*n : 1);
  if (!data || fread(data, 1, (size_t)*n, f) != (size_t)*n) die(path);
  fclose(f);
  return data;
}

static void write_file(const char* dir, const char* name, const void* data, long n) {
  char path[4096];
  FILE* f;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "wb");
  if (!f || fwrite(data, 1, (size_t)n, f) != (size_t)n) die(path);
  fclose(f);
}

static int conv2d(const char* dir) {
  long v[32], n_x, n_w, n_b, n_m, n_e, n_s, n;
  int count = 0;
  FILE* f;
  char path[4096];
  npuq_conv2d_params p;
  int8_t *x, *w, *out;
  int32_t *bias, *mult, *expo, *acc;
  uint8_t* shift;
  int64_t batch, in_h, in_w, out_h, out_w, out_count;
  int threads;
  snprintf(path, sizeof path, "%s/params.txt", dir);
  f = fopen(path, "r");
  if (!f) die(path);
  while (count < 32 && fscanf(f, "%ld", &v[count]) == 1) ++count;
  fclose(f);
  if (count != 22) die("params.txt must hold 22 integers");
  memset(&p, 0, sizeof p);
  p.in_channels = v[0];
  p.out_channels = v[1];
  p.kernel_h = v[2];
  p.kernel_w = v[3];
  p.stride_h = v[4];
  p.stride_w = v[5];
  p.dilation_h = v[6];
  p.dilation_w = v[7];
  p.pad_top = v[8];
  p.pad_bottom = v[9];
  p.pad_left = v[10];
  p.pad_right = v[11];
  p.groups = v[12];
  p.input_zero_point = (int32_t)v[13];
  p.overflow = (int32_t)v[14];
  p.requant.zero_point = (int32_t)v[15];
  p.requant.act_min = (int32_t)v[16];
  p.requant.act_max = (int32_t)v[17];
  p.requant.rounding = (int32_t)v[18];
  batch = v[19];
  in_h = v[20];
  in_w = v[21];
  threads = 0;
  x = (int8_t*)read_file(dir, "x.bin", &n_x, 0);
  w = (int8_t*)read_file(dir, "weight.bin", &n_w, 0);
  bias = (int32_t*)read_file(dir, "bias.bin", &n_b, 1);
  mult = (int32_t*)read_file(dir, "multiplier.bin", &n_m, 0);
  expo = (int32_t*)read_file(dir, "exponent.bin", &n_e, 0);
  shift = (uint8_t*)read_file(dir, "shift.bin", &n_s, 1);
  p.requant.multiplier = mult;
  p.requant.exponent = expo;
  p.requant.param_count = n_m / 4;
  p.requant.shift = shift;
  check(npuq_conv2d_output_size(&p, in_h, in_w, &out_h, &out_w), "npuq_conv2d_output_size");
  out_count = batch * out_h * out_w * p.out_channels;
  out = (int8_t*)malloc((size_t)out_count);
  acc = (int32_t*)malloc((size_t)out_count * 4);
  if (!out || !acc) die("out of memory");
  check(npuq_conv2d(&p, x, batch, in_h, in_w, n_x, w, n_w, bias, n_b / 4, out, out_count, threads), "npuq_conv2d");
  write_file(dir, "out.bin", out, (long)out_count);
  n = (long)out_count * 4;
  check(npuq_conv2d_accumulators(&p, x, batch, in_h, in_w, n_x, w, n_w, bias, n_b / 4, acc, out_count),
        "npuq_conv2d_accumulators");
  write_file(dir, "acc.bin", acc, n);
  free(x), free(w), free(bias), free(mult), free(expo), free(shift), free(out), free(acc);
  return 0;
}

static int program(const char* file, const char* x_path, long batch, int threads, const char* outdir) {
  npuq_program* prog = NULL;
  npuq_run* run = NULL;
  npuq_value_info in;
  int64_t ops, i, count;
  long n_x;
  int8_t* x;
  const int8_t* data;
  char name[64];
  check(npuq_program_load(file, 0, &prog), "npuq_program_load");
  check(npuq_program_input_info(prog, &in), "npuq_program_input_info");
  x = (int8_t*)read_file("", x_path, &n_x, 0);
  check(npuq_program_run(prog, x, batch, n_x, threads, &run), "npuq_program_run");
  check(npuq_program_op_count(prog, &ops), "npuq_program_op_count");
  for (i = 0; i < ops; ++i) {
    check(npuq_run_value(run, i, &data, &count), "npuq_run_value");
    snprintf(name, sizeof name, "op_%ld.bin", (long)i);
    write_file(outdir, name, data, (long)count);
  }
  check(npuq_run_output(run, &data, &count), "npuq_run_output");
  write_file(outdir, "output.bin", data, (long)count);
  npuq_run_free(run);
  npuq_program_free(prog);
  free(x);
  return 0;
}

static void report(npuq_status s) { printf("%s %s\n", npuq_status_name(s), npuq_last_error()); }

static int errors(void) {
  npuq_conv2d_params p;
  int8_t x[4] = {0}, out[4];
  int32_t m = 1 << 30, e = 0;
  npuq_program* prog = NULL;
  memset(&p, 0, sizeof p);
  report(npuq_check_abi(NPUQ_ABI_VERSION + 1));
  report(npuq_conv2d(NULL, x, 1, 1, 1, 1, x, 1, NULL, 0, out, 1, 0));
  p.in_channels = p.out_channels = p.kernel_h = p.kernel_w = 1;
  p.stride_h = p.stride_w = p.dilation_h = p.dilation_w = p.groups = 1;
  p.requant.multiplier = &m;
  p.requant.exponent = &e;
  p.requant.param_count = 1;
  p.requant.act_min = -128;
  p.requant.act_max = 127;
  report(npuq_conv2d(&p, x, 1, 2, 2, 3, x, 1, NULL, 0, out, 4, 0));   /* x_count 3, needs 4 */
  report(npuq_conv2d(&p, x, 1, 2, 2, 4, x, 1, NULL, 0, NULL, 4, 0));  /* out NULL */
  report(npuq_requantize_one(0, 1 << 30, 0, 99, 0, -128, 127, NPUQ_ROUNDING_DOUBLE, out));
  report(npuq_program_load(NULL, 0, &prog));
  report(npuq_program_load("/nonexistent/program.npuq", 0, &prog));
  report(npuq_program_load(".", 0, &prog));
  report(npuq_conv2d(&p, x, 1, 2, 2, 4, x, 1, NULL, 0, out, 4, 0)); /* and a good call after all that */
  return 0;
}

int main(int argc, char** argv) {
  check(npuq_check_abi(NPUQ_ABI_VERSION), "npuq_check_abi");
  if (argc == 2 && strcmp(argv[1], "version") == 0) {
    printf("abi %u arithmetic %u version %s isa %s\n", npuq_abi_version(), npuq_arithmetic_version(), npuq_version(),
           npuq_isa());
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "conv2d") == 0) return conv2d(argv[2]);
  if (argc == 7 && strcmp(argv[1], "program") == 0)
    return program(argv[2], argv[3], atol(argv[4]), atoi(argv[5]), argv[6]);
  if (argc == 2 && strcmp(argv[1], "errors") == 0) return errors();
  fprintf(stderr, "usage: capi_check version | conv2d DIR | program FILE X.bin BATCH THREADS OUTDIR | errors\n");
  return 2;
}
