// Verilator harness of tb_dpi.sv: the clock, the DPI-C golden model (npuq's C ABI) and the rates.
//
// golden_requantize() is the scoreboard's reference: it calls npuq_requantize_one (libnpuq.so) for each
// transaction and reports a rejected call with npuq's message, so that a bad transaction is an error of
// the bench and never a silently wrong expected value. Every call is also recorded, so that after the
// simulation the same calls can be replayed without the simulator to time the C ABI alone.
//
// Output, besides the bench's own lines:
//   RATE simulation_txn_per_s=<DPI calls / wall time of the simulation> c_abi_calls_per_s=<replay>
// Exit status: 0 when the bench printed PASS; 1 on mismatches, bench errors or a hung simulation;
// 2 when the library cannot be used (ABI mismatch).
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "Vtb_dpi.h"
#include "Vtb_dpi__Dpi.h"
#include "npuq.h"
#include "verilated.h"

namespace {

struct Call {
  int32_t acc, multiplier, exponent;
  uint32_t shift;
  int32_t zero_point, act_min, act_max;
  npuq_rounding rounding;
  int8_t expected;
};

constexpr size_t kMaxRecorded = size_t{1} << 22;  // 4M calls, 112 MB at most
std::vector<Call> recorded;
uint64_t dpi_calls = 0;

bool done = false;
long long done_mismatches = 0, done_errors = 0, done_transactions = 0;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Replays the recorded calls until at least min_seconds have passed; returns calls per second, or -1 when
// a replayed call disagrees with its recorded result (the library would not be deterministic).
double replay_rate(double min_seconds) {
  if (recorded.empty()) return 0.0;
  uint64_t calls = 0;
  const Clock::time_point t0 = Clock::now();
  double elapsed = 0.0;
  do {
    for (const Call& c : recorded) {
      int8_t out = 0;
      npuq_requantize_one(c.acc, c.multiplier, c.exponent, c.shift, c.zero_point, c.act_min, c.act_max, c.rounding,
                          &out);
      if (out != c.expected) return -1.0;
    }
    calls += recorded.size();
    elapsed = seconds_since(t0);
  } while (elapsed < min_seconds);
  return static_cast<double>(calls) / elapsed;
}

long long plusarg_or(VerilatedContext* context, const char* name, long long fallback) {
  const std::string prefix = std::string{name} + "=";
  const char* match = context->commandArgsPlusMatch(prefix.c_str());
  if (!match || !*match) return fallback;
  return std::strtoll(match + 1 + prefix.size(), nullptr, 10);  // "+name=value"
}

}  // namespace

extern "C" int golden_requantize(int acc, int multiplier, int exponent, int shift, int zero_point, int act_min,
                                 int act_max, int rounding, char* expected) {
  ++dpi_calls;
  const npuq_rounding mode = rounding ? NPUQ_ROUNDING_SINGLE : NPUQ_ROUNDING_DOUBLE;
  int8_t out = 0;
  const npuq_status status = npuq_requantize_one(acc, multiplier, exponent, static_cast<uint32_t>(shift), zero_point,
                                                 act_min, act_max, mode, &out);
  if (status != NPUQ_OK) {
    std::printf("ERROR golden model rejected acc %d M0 %d e %d s %d z %d clamp [%d, %d] rounding %d: %s: %s\n", acc,
                multiplier, exponent, shift, zero_point, act_min, act_max, rounding, npuq_status_name(status),
                npuq_last_error());
    *expected = 0;
    return static_cast<int>(status);
  }
  *expected = static_cast<char>(out);
  if (recorded.size() < kMaxRecorded) {
    recorded.push_back(
        Call{acc, multiplier, exponent, static_cast<uint32_t>(shift), zero_point, act_min, act_max, mode, out});
  }
  return 0;
}

extern "C" void bench_done(long long transactions, long long mismatches, long long errors) {
  done = true;
  done_transactions = transactions;
  done_mismatches = mismatches;
  done_errors = errors;
}

int main(int argc, char** argv) {
  if (npuq_check_abi(NPUQ_ABI_VERSION) != NPUQ_OK) {
    std::fprintf(stderr, "tb_dpi: %s\n", npuq_last_error());
    return 2;
  }
  const std::unique_ptr<VerilatedContext> context{new VerilatedContext};
  context->commandArgs(argc, argv);
  context->fatalOnError(false);
  const std::unique_ptr<Vtb_dpi> top{new Vtb_dpi{context.get(), "TOP"}};

  // The bench issues about 8 transactions per 7 clocks; anything far beyond that is a hang.
  const long long txns = plusarg_or(context.get(), "txns", 200000);
  const long long max_clocks = 2 * txns + 1000;
  recorded.reserve(static_cast<size_t>(txns) < kMaxRecorded ? static_cast<size_t>(txns) : kMaxRecorded);

  long long clocks = 0;
  const Clock::time_point t0 = Clock::now();
  top->clk = 0;
  top->eval();
  while (!context->gotFinish() && clocks < max_clocks) {
    top->clk = 1;
    top->eval();
    context->timeInc(5);
    top->clk = 0;
    top->eval();
    context->timeInc(5);
    ++clocks;
  }
  const double sim_seconds = seconds_since(t0);
  top->final();

  if (!done) {
    std::printf("ERROR tb_dpi: the bench did not finish within %lld clocks\n", max_clocks);
    return 1;
  }
  const double sim_rate = static_cast<double>(dpi_calls) / sim_seconds;
  std::printf("simulation: %" PRIu64 " transactions (DPI calls) in %lld clocks, %.3f s: %.0f transactions/s\n",
              dpi_calls, clocks, sim_seconds, sim_rate);
  const double c_rate = replay_rate(0.2);
  if (c_rate < 0) {
    std::printf("ERROR tb_dpi: replaying a recorded call gave another result\n");
    return 1;
  }
  std::printf("C ABI alone: npuq_requantize_one on the same %zu arguments: %.0f calls/s\n", recorded.size(), c_rate);
  std::printf("RATE simulation_txn_per_s=%.0f c_abi_calls_per_s=%.0f\n", sim_rate, c_rate);
  std::fflush(stdout);
  if (context->gotError() || done_errors != 0 || done_mismatches != 0 || done_transactions != txns) return 1;
  return 0;
}
