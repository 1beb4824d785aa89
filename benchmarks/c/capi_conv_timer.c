/* Times npuq_conv2d_plan_run from C, with no Python in the process: the C ABI's own cost over the
 * kernels. benchmarks/bench_capi.py writes each layer as DIR/{params.txt, x.bin, weight.bin, bias.bin}
 * (params.txt: in_c out_c k stride pad groups input_zp batch in_h in_w multiplier exponent) and compares
 * the times printed here with the Python API's on the same layer.
 *
 *   capi_conv_timer DIR REPS THREADS   ->  "median_ns min_ns"
 */
#define _POSIX_C_SOURCE 199309L
#include <npuq.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void* slurp(const char* dir, const char* name, long* n) {
  char path[4096];
  FILE* f;
  void* data;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "capi_conv_timer: cannot open %s\n", path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  fseek(f, 0, SEEK_SET);
  data = malloc((size_t)*n);
  if (!data || fread(data, 1, (size_t)*n, f) != (size_t)*n) exit(2);
  fclose(f);
  return data;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char** argv) {
  char path[4096];
  long v[12], n_x, n_w, n_b;
  int i, reps, threads;
  FILE* f;
  npuq_conv2d_params p = {0};
  npuq_conv2d_plan* plan = NULL;
  int8_t *x, *w, *out;
  int32_t *bias, m, e;
  int64_t oh, ow, out_count;
  double* t;
  if (argc != 4) {
    fprintf(stderr, "usage: capi_conv_timer DIR REPS THREADS\n");
    return 2;
  }
  reps = atoi(argv[2]);
  threads = atoi(argv[3]);
  if (npuq_check_abi(NPUQ_ABI_VERSION) != NPUQ_OK) {
    fprintf(stderr, "%s\n", npuq_last_error());
    return 1;
  }
  snprintf(path, sizeof path, "%s/params.txt", argv[1]);
  f = fopen(path, "r");
  for (i = 0; f && i < 12; ++i)
    if (fscanf(f, "%ld", &v[i]) != 1) return 2;
  if (!f) return 2;
  fclose(f);
  x = (int8_t*)slurp(argv[1], "x.bin", &n_x);
  w = (int8_t*)slurp(argv[1], "weight.bin", &n_w);
  bias = (int32_t*)slurp(argv[1], "bias.bin", &n_b);
  m = (int32_t)v[10];
  e = (int32_t)v[11];
  p.in_channels = v[0];
  p.out_channels = v[1];
  p.kernel_h = p.kernel_w = v[2];
  p.stride_h = p.stride_w = v[3];
  p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = v[4];
  p.dilation_h = p.dilation_w = 1;
  p.groups = v[5];
  p.input_zero_point = (int32_t)v[6];
  p.requant.multiplier = &m;
  p.requant.exponent = &e;
  p.requant.param_count = 1;
  p.requant.act_min = -128;
  p.requant.act_max = 127;
  if (npuq_conv2d_plan_create(&p, w, n_w, bias, n_b / 4, &plan) != NPUQ_OK ||
      npuq_conv2d_output_size(&p, v[8], v[9], &oh, &ow) != NPUQ_OK) {
    fprintf(stderr, "%s\n", npuq_last_error());
    return 1;
  }
  out_count = v[7] * oh * ow * p.out_channels;
  out = (int8_t*)malloc((size_t)out_count);  /* a fresh output per call, as the Python API allocates one */
  t = (double*)malloc(sizeof(double) * (size_t)reps);
  for (i = -3; i < reps; ++i) { /* three warm-up calls */
    const double t0 = now_ns();
    int8_t* o = (int8_t*)malloc((size_t)out_count);
    if (npuq_conv2d_plan_run(plan, x, v[7], v[8], v[9], n_x, o, out_count, threads) != NPUQ_OK) {
      fprintf(stderr, "%s\n", npuq_last_error());
      return 1;
    }
    free(o);
    if (i >= 0) t[i] = now_ns() - t0;
  }
  qsort(t, (size_t)reps, sizeof(double), by_value);
  printf("%.0f %.0f\n", t[reps / 2], t[0]);
  npuq_conv2d_plan_free(plan);
  free(out), free(t), free(x), free(w), free(bias);
  return 0;
}
