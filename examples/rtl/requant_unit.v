// requant_unit: the NPU's requantization of one int32 accumulator to int8 per clock.
//
// The arithmetic is docs/arithmetic.md section 3 (requantize(acc, M0, e, s_c), both rounding modes, the
// output stage), bit for bit as npuq's golden model (csrc/include/npuq/fixedpoint.h, npuq_requantize_one
// of the C ABI). Section numbers in the comments refer to docs/arithmetic.md.
//
// Both rounding modes are computed as ONE rounding of the exact 64-bit product p = x * M0 (section 3.5):
//
//     r = saturate_int32(floor((p + offset) / 2^T))
//
//   single (3.2):                 x = acc,                          T = 31 - e_c, offset = 2^(T-1)
//   double (3.1), e_c >= 0:       x = saturate_int32(acc * 2^e_c),  T = 31,       offset = 2^30
//   double (3.1), e_c = -n < 0:   x = acc,                          T = 31 + n,
//                                 offset = 2^(T-1) + 2^30 - [p < 0] * 2^31 = 2^(T-1) + (p < 0 ? -2^30 : +2^30)
//
// The double line is SRDHM followed by RDBPOT folded into one shift (3.5); section 3.5 states it for
// e_c in [-31, 0], and the same algebra holds down to e_c = -46 (RDBPOT's integer form is
// floor((h + 2^(n-1) - [h < 0]) / 2^n) for every n >= 1, including n >= 32 where it gives 0, or -1 for
// h = -2^31, n = 32). A shift T >= 64 always gives 0 in both modes (|p| < 2^62), so the datapath is
// 65 bits wide and such shifts are flushed to 0 instead of being carried out.
//
// Domain (what npuq's programs hold, section 1): M0 = 0 or in [2^30, 2^31 - 1] (the algebra above holds for
// any M0 in [0, 2^31 - 1], but only npuq's domain is tested; a negative M0 is outside), e in [-31, 30],
// s_c in [0, 15],
// -128 <= act_min <= act_max <= 127. Outside the domain the output is defined by the logic but is not
// the golden model's.
//
// The exponent port is 6 bits, not 32: section 1 bounds e to [-31, 30], which a 6-bit two's-complement
// field holds ([-32, 31]); npuq's program validation rejects anything else before it reaches the NPU,
// so the upper 26 bits of the int32 exponent in the vector files are pure sign extension.
//
// Pipeline: 5 register stages, one transaction accepted and one result produced per clock, no stalls:
// out_valid/out are the result of the in_valid/inputs of 5 clocks earlier (LATENCY = 5).
//   stage 1: effective exponent e_c, double-rounding left shift with saturation, shift amount T
//   stage 2: the 32 x 32 -> 64-bit product p
//   stage 3: p + offset (the rounding constants of 3.1 / 3.2)
//   stage 4: arithmetic shift right by T, saturation to int32
//   stage 5: output stage 3.3: + zero point, clamp to [act_min, act_max]
//
// BROKEN_ROUNDING = 1 builds a deliberately wrong unit for testing the test benches: in double rounding
// with e_c < 0 it adds +2^30 for negative products too, i.e. RDBPOT rounds negative ties toward +infinity
// instead of away from zero (one wrong sign of one nudge). It differs from the golden model only where
// a negative h = SRDHM(x, M0) is an exact tie of h / 2^n (about 1 in 2^n of the negative outputs).
`timescale 1ns / 1ps
`default_nettype none

module requant_unit #(
    parameter BROKEN_ROUNDING = 0
) (
    input  wire               clk,
    input  wire               rst,         // synchronous, active high: clears the valid pipeline
    input  wire               in_valid,
    input  wire signed [31:0] acc,         // int32 accumulator (after the overflow policy, section 5)
    input  wire signed [31:0] multiplier,  // M0, Q31 (section 2)
    input  wire signed [5:0]  exponent,    // e in [-31, 30]
    input  wire        [3:0]  shift,       // s_c, WESS channel shift in [0, 15]
    input  wire signed [7:0]  zero_point,  // z_out
    input  wire signed [7:0]  act_min,
    input  wire signed [7:0]  act_max,
    input  wire               rounding,    // 0: double, 1: single (npuq_rounding's values)
    output wire               out_valid,
    output wire signed [7:0]  out
);

  // ------------------------------------------------------------------------------------------ stage 1
  // Section 3: e_c = e - s_c. The fields allow [-47, 31]; 7 bits signed hold it.
  wire signed [6:0] ec = {exponent[5], exponent} - {3'b000, shift};
  wire ec_neg = ec[6];
  wire ec_pos = !ec[6] && (ec != 7'sd0);

  // Section 3.1: left = max(e_c, 0) <= 31, a = saturate_int32(acc * 2^left). 63 bits hold acc * 2^31.
  wire [4:0] left = ec_pos ? ec[4:0] : 5'd0;
  wire [62:0] acc_wide = {{31{acc[31]}}, acc};
  wire [62:0] acc_shifted = acc_wide << left;
  // The shifted value fits int32 when bits 62..31 are all copies of its sign bit.
  wire shifted_fits = (&acc_shifted[62:31]) | ~(|acc_shifted[62:31]);
  wire [31:0] acc_saturated = shifted_fits ? acc_shifted[31:0] : (acc[31] ? 32'h8000_0000 : 32'h7fff_ffff);

  // Single rounding (3.2) multiplies acc itself; double rounding (3.1) the saturated left-shifted value
  // (equal to acc when e_c <= 0).
  wire [31:0] x = rounding ? acc : acc_saturated;

  // T: single t = 31 - e_c (3.2); double 31 + max(-e_c, 0) (3.5) = 31 - min(e_c, 0). Range [0, 78].
  wire [6:0] ec_for_t = (rounding || ec_neg) ? ec : 7'd0;
  wire [6:0] t = 7'd31 - ec_for_t;
  // Double rounding with a right shift (n = -e_c >= 1) adds the SRDHM nudge to the RDBPOT offset (3.5).
  wire two_roundings = !rounding && ec_neg;

  reg        s1_valid;
  reg [31:0] s1_x;
  reg [31:0] s1_m0;
  reg [6:0]  s1_t;
  reg        s1_two;
  reg [7:0]  s1_zp, s1_min, s1_max;

  always @(posedge clk) begin
    s1_valid <= rst ? 1'b0 : in_valid;
    s1_x <= x;
    s1_m0 <= multiplier;
    s1_t <= t;
    s1_two <= two_roundings;
    s1_zp <= zero_point;
    s1_min <= act_min;
    s1_max <= act_max;
  end

  // ------------------------------------------------------------------------------------------ stage 2
  // The exact product p = x * M0 (|p| <= 2^62): both operands sign-extended to 64 bits, so the low 64
  // bits of the product are the two's complement of the signed product.
  wire [63:0] product = {{32{s1_x[31]}}, s1_x} * {{32{s1_m0[31]}}, s1_m0};

  reg        s2_valid;
  reg [63:0] s2_p;
  reg [6:0]  s2_t;
  reg        s2_two;
  reg [7:0]  s2_zp, s2_min, s2_max;

  always @(posedge clk) begin
    s2_valid <= rst ? 1'b0 : s1_valid;
    s2_p <= product;
    s2_t <= s1_t;
    s2_two <= s1_two;
    s2_zp <= s1_zp;
    s2_min <= s1_min;
    s2_max <= s1_max;
  end

  // ------------------------------------------------------------------------------------------ stage 3
  // offset = 2^(T-1) (the half of the final rounding: 3.2's rounding, or RDBPOT's 2^(n-1) shifted by the
  // 31 bits of SRDHM, or for double with e_c >= 0 SRDHM's own 2^30), plus for two roundings SRDHM's nudge
  // 2^30 and RDBPOT's tie correction -[h < 0] * 2^31, where [h < 0] may be read as [p < 0] (3.5).
  // Together: +2^30 for p >= 0, -2^30 for p < 0. T >= 64 is flushed in stage 4, so only T <= 63 matters
  // here and 2^(T-1) <= 2^62: |p + offset| < 2^64 fits 65 bits signed.
  wire p_neg = s2_p[63];
  wire [64:0] p_wide = {s2_p[63], s2_p};
  wire [64:0] half = 65'd1 << (s2_t[5:0] - 6'd1);
  localparam [64:0] PLUS_2_30 = 65'd1 << 30;
  localparam [64:0] MINUS_2_30 = ~PLUS_2_30 + 65'd1;
  wire nudge_down = p_neg && (BROKEN_ROUNDING == 0);  // the broken unit never takes the -2^30 branch
  wire [64:0] nudge = !s2_two ? 65'd0 : (nudge_down ? MINUS_2_30 : PLUS_2_30);
  wire [64:0] sum = p_wide + half + nudge;

  reg        s3_valid;
  reg [64:0] s3_sum;
  reg [5:0]  s3_t;
  reg        s3_flush;
  reg [7:0]  s3_zp, s3_min, s3_max;

  always @(posedge clk) begin
    s3_valid <= rst ? 1'b0 : s2_valid;
    s3_sum <= sum;
    s3_t <= s2_t[5:0];
    s3_flush <= s2_t[6];  // T >= 64: the quotient is 0 (3.2: t >= 63 already is; 3.1: RDBPOT n >= 33)
    s3_zp <= s2_zp;
    s3_min <= s2_min;
    s3_max <= s2_max;
  end

  // ------------------------------------------------------------------------------------------ stage 4
  // floor((p + offset) / 2^T) is an arithmetic shift; single rounding with e_c > 0 can exceed int32, so
  // saturate (3.2; double's r always fits).
  wire signed [64:0] quotient = $signed(s3_sum) >>> s3_t;
  wire quotient_fits = (&quotient[64:31]) | ~(|quotient[64:31]);
  wire [31:0] quotient_saturated = quotient_fits ? quotient[31:0] : (quotient[64] ? 32'h8000_0000 : 32'h7fff_ffff);
  wire [31:0] r = s3_flush ? 32'd0 : quotient_saturated;

  reg        s4_valid;
  reg [31:0] s4_r;
  reg [7:0]  s4_zp, s4_min, s4_max;

  always @(posedge clk) begin
    s4_valid <= rst ? 1'b0 : s3_valid;
    s4_r <= r;
    s4_zp <= s3_zp;
    s4_min <= s3_min;
    s4_max <= s3_max;
  end

  // ------------------------------------------------------------------------------------------ stage 5
  // Output stage (3.3): y = clamp(r + z_out, act_min, act_max), the sum exact in 33 bits.
  wire signed [32:0] y = $signed({s4_r[31], s4_r}) + $signed({{25{s4_zp[7]}}, s4_zp});
  wire signed [32:0] lo = $signed({{25{s4_min[7]}}, s4_min});
  wire signed [32:0] hi = $signed({{25{s4_max[7]}}, s4_max});
  wire [7:0] clamped = (y < lo) ? s4_min : ((y > hi) ? s4_max : y[7:0]);

  reg       s5_valid;
  reg [7:0] s5_y;

  always @(posedge clk) begin
    s5_valid <= rst ? 1'b0 : s4_valid;
    s5_y <= clamped;
  end

  assign out_valid = s5_valid;
  assign out = s5_y;

endmodule

`default_nettype wire
