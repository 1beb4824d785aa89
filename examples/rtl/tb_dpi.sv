// tb_dpi: constrained-random transactions through requant_unit, scored against npuq's golden model
// (npuq_requantize_one of the C ABI, libnpuq.so) called through DPI-C for every transaction.
//
// Runs under Verilator only: tb_dpi_main.cpp drives the clock, provides the DPI functions and measures the rate.
// Plusargs:
//   +txns=N        transactions (default 200000)
//   +seed=S        generator seed (default 1); a failing seed reproduces exactly
//   +broken=1      score the BROKEN_ROUNDING unit instead of the good one
//   +max_report=K  print the first K mismatches (default 10)
// Prints "PASS n" or "FAIL k of n"; the program's exit status is non-zero on any mismatch or error.
//
// Transaction mix (one kind drawn per transaction, section numbers of docs/arithmetic.md):
//   uniform   every field uniform over its whole domain (acc over all of int32, e in [-31, 30],
//             s_c in [0, 15], M0 in [2^30, 2^31)), both roundings
//   layer     conv-like: |acc| < 2^20, e in [-12, -1], small WESS shifts (the common case)
//   tie       M0 a short binary fraction (0.5, 0.75, 0.625, 0.875) and |acc| near 2^n: many exact
//             ties of SRDHM and RDBPOT (3.1) and of the single rounding (3.2)
//   clamp     M = 1 exactly (M0 = 2^30, e = 1) so r = acc, acc within 3 of the clamp edges (3.3)
//   large     e in [1, 30]: the saturating left shift of 3.1 and the saturation of 3.2
//   extreme   acc in {-2^31, -2^31 + 1, -1, 0, 1, 2^31 - 1}, M0 in {0, 2^30, 2^31 - 1}, any e and s_c:
//             the flush of M0 = 0 (section 2) and right shifts up to 46 (RDBPOT n >= 32)
`timescale 1ns / 1ps
`default_nettype none

module tb_dpi (
    input wire clk
);
  // The golden model: npuq_requantize_one through a checking wrapper (tb_dpi_main.cpp). Returns 0, or
  // the npuq_status when the library rejected the transaction (a generator bug: the message is printed).
  import "DPI-C" function int golden_requantize(input int acc, input int multiplier, input int exponent,
                                                input int shift, input int zero_point, input int act_min,
                                                input int act_max, input int rounding, output byte expected);
  // The end of the run, for the harness's exit status and rate.
  import "DPI-C" function void bench_done(input longint transactions, input longint mismatches,
                                          input longint errors);

  localparam int LATENCY = 5;  // requant_unit's documented latency, checked on every output
  localparam int SLOTS = 64;   // transactions in flight at most: LATENCY + 1 < SLOTS (6-bit slot index)

  int unsigned txns, seed, max_report;
  int broken;

  // ------------------------------------------------------------------------------------ random source
  // xorshift64*: the same stream in any simulator for a given +seed.
  logic [63:0] state;

  function automatic logic [63:0] next64(inout logic [63:0] s);
    s = s ^ (s >> 12);
    s = s ^ (s << 25);
    s = s ^ (s >> 27);
    return s * 64'h2545_f491_4f6c_dd1d;
  endfunction

  // uniform in [lo, hi] (hi - lo < 2^32); the modulo bias of a 64-bit draw is below 2^-31
  function automatic int range(inout logic [63:0] s, input int lo, input int hi);
    logic [63:0] r;
    logic [63:0] span;
    r = next64(s);
    span = 64'(hi) - 64'(lo) + 64'd1;
    return int'(64'(lo) + r % span);
  endfunction

  // ------------------------------------------------------------------------------------ the transaction
  typedef struct packed {
    logic signed [31:0] acc;
    logic signed [31:0] multiplier;
    logic signed [31:0] exponent;
    logic [31:0] shift;
    logic signed [31:0] zero_point;
    logic signed [31:0] act_min;
    logic signed [31:0] act_max;
    logic rounding;
  } txn_t;

  function automatic txn_t draw(inout logic [63:0] s);
    txn_t t;
    int kind, n, lo, hi, m;
    kind = range(s, 0, 11);
    t.rounding = range(s, 0, 1) == 1;
    t.zero_point = range(s, -128, 127);
    // clamps: full range, ReLU-like (act_min = z), or a random ordered pair
    m = range(s, 0, 3);
    if (m < 2) begin
      t.act_min = -128;
      t.act_max = 127;
    end else if (m == 2) begin
      t.act_min = t.zero_point;
      t.act_max = 127;
    end else begin
      lo = range(s, -128, 127);
      hi = range(s, -128, 127);
      t.act_min = lo < hi ? lo : hi;
      t.act_max = lo < hi ? hi : lo;
    end
    t.multiplier = range(s, 32'h4000_0000, 32'h7fff_ffff);
    t.exponent = range(s, -31, 30);
    t.shift = range(s, 0, 15);
    t.acc = int'(next64(s));
    if (kind < 3) begin
      // uniform: as drawn
    end else if (kind < 6) begin
      t.acc = range(s, -(1 << 20), 1 << 20);
      t.exponent = range(s, -12, -1);
      t.shift = range(s, 0, 3);
    end else if (kind < 8) begin
      case (range(s, 0, 3))
        0: t.multiplier = 32'h4000_0000;  // 0.5
        1: t.multiplier = 32'h6000_0000;  // 0.75
        2: t.multiplier = 32'h5000_0000;  // 0.625
        default: t.multiplier = 32'h7000_0000;  // 0.875
      endcase
      t.exponent = range(s, -20, 0);
      t.shift = range(s, 0, 15);
      n = -(t.exponent - t.shift) + 4;  // |acc| up to about 2^4 times the rounding step
      n = n > 30 ? 30 : n;
      t.acc = range(s, -(1 << n), 1 << n);
    end else if (kind == 8) begin
      t.multiplier = 32'h4000_0000;
      t.exponent = 1;
      t.shift = 0;
      t.acc = (range(s, 0, 1) == 1 ? t.act_min : t.act_max) - t.zero_point + range(s, -3, 3);
    end else if (kind == 9) begin
      t.exponent = range(s, 1, 30);
      t.shift = range(s, 0, 2);
      case (range(s, 0, 2))
        0: t.acc = range(s, -1024, 1024);
        1: t.acc = range(s, -(1 << 24), 1 << 24);
        default: t.acc = int'(next64(s));
      endcase
    end else begin
      case (range(s, 0, 5))
        0: t.acc = 32'sh8000_0000;
        1: t.acc = 32'sh8000_0001;
        2: t.acc = -1;
        3: t.acc = 0;
        4: t.acc = 1;
        default: t.acc = 32'sh7fff_ffff;
      endcase
      case (range(s, 0, 2))
        0: t.multiplier = 0;
        1: t.multiplier = 32'h4000_0000;
        default: t.multiplier = 32'h7fff_ffff;
      endcase
    end
    return t;
  endfunction

  // ---------------------------------------------------------------------------------------- the units
  logic rst = 1'b1;
  logic in_valid = 1'b0;
  txn_t in_txn;
  logic good_valid, bad_valid;
  logic signed [7:0] good_out, bad_out;

  requant_unit #(.BROKEN_ROUNDING(0)) good (
      .clk(clk), .rst(rst), .in_valid(in_valid), .acc(in_txn.acc), .multiplier(in_txn.multiplier),
      .exponent(in_txn.exponent[5:0]), .shift(in_txn.shift[3:0]), .zero_point(in_txn.zero_point[7:0]),
      .act_min(in_txn.act_min[7:0]), .act_max(in_txn.act_max[7:0]), .rounding(in_txn.rounding),
      .out_valid(good_valid), .out(good_out));
  requant_unit #(.BROKEN_ROUNDING(1)) bad (
      .clk(clk), .rst(rst), .in_valid(in_valid), .acc(in_txn.acc), .multiplier(in_txn.multiplier),
      .exponent(in_txn.exponent[5:0]), .shift(in_txn.shift[3:0]), .zero_point(in_txn.zero_point[7:0]),
      .act_min(in_txn.act_min[7:0]), .act_max(in_txn.act_max[7:0]), .rounding(in_txn.rounding),
      .out_valid(bad_valid), .out(bad_out));

  wire dut_valid = broken != 0 ? bad_valid : good_valid;
  wire signed [7:0] dut_out = broken != 0 ? bad_out : good_out;

  // ------------------------------------------------------------------------ driver and scoreboard
  txn_t slot_txn[SLOTS];
  logic signed [7:0] slot_expected[SLOTS];
  longint slot_edge[SLOTS];
  longint edge_count = 0, issued = 0, checked = 0, mismatches = 0, errors = 0;
  logic [5:0] issue_slot = 6'd0, check_slot = 6'd0;
  logic finished = 1'b0;

  initial begin
    if (!$value$plusargs("txns=%d", txns)) txns = 200000;
    if (!$value$plusargs("seed=%d", seed)) seed = 1;
    if (!$value$plusargs("broken=%d", broken)) broken = 0;
    if (!$value$plusargs("max_report=%d", max_report)) max_report = 10;
    // a zero state would stay zero; mix the seed so that nearby seeds give unrelated streams
    state = (64'(seed) + 64'd1) * 64'h9e37_79b9_7f4a_7c15;
    $display("tb_dpi: %0d transactions, seed %0d, %0s unit", txns, seed, broken != 0 ? "BROKEN_ROUNDING" : "good");
  end

  always @(posedge clk) begin
    txn_t t;
    logic signed [7:0] expected;
    int status;
    logic [63:0] s;
    edge_count <= edge_count + 1;
    rst <= 1'b0;
    in_valid <= 1'b0;
    // one transaction per clock, with a bubble about every eighth clock (out_valid must follow)
    if (!rst && issued < longint'(txns)) begin
      s = state;
      if (range(s, 0, 7) != 0) begin
        t = draw(s);
        status = golden_requantize(t.acc, t.multiplier, t.exponent, t.shift, t.zero_point, t.act_min, t.act_max,
                                   {31'd0, t.rounding}, expected);
        if (status != 0) errors <= errors + 1;
        slot_txn[issue_slot] <= t;
        slot_expected[issue_slot] <= expected;
        slot_edge[issue_slot] <= edge_count + 1;  // the edge on which the unit takes it
        in_txn <= t;
        in_valid <= 1'b1;
        issued <= issued + 1;
        issue_slot <= issue_slot + 6'd1;
      end
      state <= s;
    end
    if (!rst && dut_valid && !finished) begin
      txn_t c;
      c = slot_txn[check_slot];
      if (edge_count != slot_edge[check_slot] + longint'(LATENCY)) begin
        $display("ERROR transaction %0d: result seen on clock %0d, expected %0d (latency %0d)", checked, edge_count,
                 slot_edge[check_slot] + longint'(LATENCY), LATENCY);
        errors <= errors + 1;
      end
      if (dut_out != slot_expected[check_slot]) begin
        if (mismatches < longint'(max_report))
          $display("MISMATCH transaction %0d: acc %0d M0 %0d e %0d s %0d z %0d clamp [%0d, %0d] %0s: expected %0d, got %0d",
                   checked, c.acc, c.multiplier, c.exponent, c.shift, c.zero_point, c.act_min, c.act_max,
                   c.rounding ? "single" : "double", slot_expected[check_slot], dut_out);
        mismatches <= mismatches + 1;
      end
      checked <= checked + 1;
      check_slot <= check_slot + 6'd1;
    end
    if (!finished && checked == longint'(txns)) begin
      finished <= 1'b1;
      if (mismatches == 0 && errors == 0) $display("PASS %0d", txns);
      else if (errors == 0) $display("FAIL %0d of %0d", mismatches, txns);
      else $display("FAIL %0d of %0d (and %0d bench errors)", mismatches, txns, errors);
      bench_done(longint'(txns), mismatches, errors);
      $finish;
    end
  end
endmodule

`default_nettype wire
