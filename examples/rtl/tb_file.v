// tb_file: streams the accumulators of one conv2d / fully_connected op of an npuq golden vector set
// (`npuq export-vectors ... --accumulators`, docs/golden_vectors.md) through requant_unit and compares
// every output with the set's expected int8 output.
//
// Files, read with $readmemh from the op folder given as +vectors=DIR:
//   accumulator.hex  int32 NHWC, N*OH*OW*C_out values (before requantization)
//   multiplier.hex   int32, 1 (per layer) or C_out values
//   exponent.hex     int32, like multiplier
//   shift.hex        uint8, C_out values
//   output.hex       int8 NHWC, the expected outputs
// Plusargs (run_file_bench.py passes them from manifest.json):
//   +vectors=DIR +count=N +channels=C        N accumulators, C output channels (the files must agree)
//   +zero_point=Z +act_min=LO +act_max=HI    the op's output_zero_point, act_min, act_max
//   +rounding=double|single                  the set's rounding
//   +broken=1                                check the BROKEN_ROUNDING unit instead of the good one
//   +max_report=K                            print the first K mismatches (default 10)
//   +dump=FILE                               write the unit's outputs as hex (for `npuq verify`)
// Exit status: 0 after "PASS n"; $fatal (non-zero) after "FAIL k of n" or on any bad input, whose message
// names the file or plusarg at fault.
//
// Both units (good and broken) are built side by side so that one simulator build serves both runs.
`timescale 1ns / 1ps
`default_nettype none

module tb_file;
  // The largest layer this build can hold (memories are static in Verilog); rebuild with a larger
  // value (iverilog -P tb_file.MAX_COUNT=..., verilator -GMAX_COUNT=...) for bigger layers.
  parameter MAX_COUNT = 1 << 20;
  parameter MAX_CHANNELS = 8192;
  localparam LATENCY = 5;  // requant_unit's documented latency, checked on every output

  reg signed [31:0] acc_mem [0:MAX_COUNT-1];
  reg signed [7:0] expected_mem [0:MAX_COUNT-1];
  reg signed [7:0] result_mem [0:MAX_COUNT-1];
  reg signed [31:0] mult_mem [0:MAX_CHANNELS-1];
  reg signed [31:0] expo_mem [0:MAX_CHANNELS-1];
  reg [7:0] shift_mem [0:MAX_CHANNELS-1];

  reg [8*1024-1:0] dir, dump_path, path;
  reg [8*16-1:0] rounding_name;
  integer count, channels, params, zero_point, act_min, act_max, broken, max_report;
  integer words, i, mismatches, received, sent, first_edge, cycle;
  reg dump, done;
  reg rounding;
  reg loaded;

  // ------------------------------------------------------------------------------- the units under test
  reg clk = 1'b0;
  reg rst = 1'b1;
  reg in_valid = 1'b0;
  reg signed [31:0] in_acc = 32'sd0, in_mult = 32'sd0;
  reg signed [5:0] in_expo = 6'sd0;
  reg [3:0] in_shift = 4'd0;
  reg signed [7:0] in_zp = 8'sd0, in_min = -8'sd128, in_max = 8'sd127;
  wire good_valid, bad_valid;
  wire signed [7:0] good_out, bad_out;

  requant_unit #(.BROKEN_ROUNDING(0)) good (
      .clk(clk), .rst(rst), .in_valid(in_valid), .acc(in_acc), .multiplier(in_mult), .exponent(in_expo),
      .shift(in_shift), .zero_point(in_zp), .act_min(in_min), .act_max(in_max), .rounding(rounding),
      .out_valid(good_valid), .out(good_out));
  requant_unit #(.BROKEN_ROUNDING(1)) bad (
      .clk(clk), .rst(rst), .in_valid(in_valid), .acc(in_acc), .multiplier(in_mult), .exponent(in_expo),
      .shift(in_shift), .zero_point(in_zp), .act_min(in_min), .act_max(in_max), .rounding(rounding),
      .out_valid(bad_valid), .out(bad_out));

  wire dut_valid = (broken != 0) ? bad_valid : good_valid;
  wire signed [7:0] dut_out = (broken != 0) ? bad_out : good_out;

  always #5 clk = ~clk;

  // ------------------------------------------------------------------------------------- file checks
  // The number of values in a golden hex file: its lines that do not start with "//" (the header).
  // $readmemh itself only warns about a short or long file, so the bench counts first.
  function integer hex_words(input [8*1024-1:0] file);
    reg [8*2048-1:0] line;
    reg [7:0] first;
    integer fd, n;
    begin
      hex_words = 0;
      fd = $fopen(file, "r");
      if (fd == 0) begin
        hex_words = -1;
      end else begin
        n = $fgets(line, fd);
        while (n > 0) begin
          first = line[8*n-1 -: 8];
          if (first != "/" && first != 8'h0a && first != 8'h0d && first != " ") hex_words = hex_words + 1;
          n = $fgets(line, fd);
        end
        $fclose(fd);
      end
    end
  endfunction

  // $fatal ends an Icarus run at once; a Verilator run (tb_file_main.cpp keeps it from aborting) goes on to
  // the end of the time step, so the setup leaves its block after every error (disable setup).
  reg setup_failed;

  task load_check(input [8*1024-1:0] file, input integer expected, output integer got);
    begin
      got = hex_words(file);
      if (got < 0) begin
        $fatal(1, "%0s: cannot open (is +vectors= the op folder of an export with --accumulators?)", file);
        setup_failed = 1'b1;
      end else if (expected >= 0 && got != expected) begin
        $fatal(1, "%0s: %0d values, expected %0d (+count / +channels disagree with the file)", file, got, expected);
        setup_failed = 1'b1;
      end
    end
  endtask

  // -------------------------------------------------------------------------------------------- setup
  initial begin : setup
    loaded = 1'b0;
    dump = 1'b0;
    rounding = 1'b0;
    setup_failed = 1'b0;
    if (!$value$plusargs("vectors=%s", dir)) begin
      $fatal(1, "missing plusarg +vectors=<op folder of a golden vector set>");
      disable setup;
    end
    if (!$value$plusargs("count=%d", count) || !$value$plusargs("channels=%d", channels)
        || !$value$plusargs("zero_point=%d", zero_point) || !$value$plusargs("act_min=%d", act_min)
        || !$value$plusargs("act_max=%d", act_max) || !$value$plusargs("rounding=%s", rounding_name)) begin
      $fatal(1, "missing plusarg: +count, +channels, +zero_point, +act_min, +act_max and +rounding are required");
      disable setup;
    end
    if (!$value$plusargs("broken=%d", broken)) broken = 0;
    if (!$value$plusargs("max_report=%d", max_report)) max_report = 10;
    if ($value$plusargs("dump=%s", dump_path)) dump = 1'b1;

    if (rounding_name == "double") rounding = 1'b0;
    else if (rounding_name == "single") rounding = 1'b1;
    else begin
      $fatal(1, "+rounding=%0s: expected double or single", rounding_name);
      disable setup;
    end
    if (count < 1 || count > MAX_COUNT) begin
      $fatal(1, "+count=%0d: must be in [1, MAX_COUNT = %0d] (rebuild with a larger MAX_COUNT)", count, MAX_COUNT);
      disable setup;
    end
    if (channels < 1 || channels > MAX_CHANNELS || count % channels != 0) begin
      $fatal(1, "+channels=%0d: must be in [1, %0d] and divide +count=%0d", channels, MAX_CHANNELS, count);
      disable setup;
    end
    if (zero_point < -128 || zero_point > 127 || act_min < -128 || act_min > act_max || act_max > 127) begin
      $fatal(1, "+zero_point=%0d +act_min=%0d +act_max=%0d: need int8 values with act_min <= act_max", zero_point,
             act_min, act_max);
      disable setup;
    end

    $sformat(path, "%0s/accumulator.hex", dir);
    load_check(path, count, words);
    if (setup_failed) disable setup;
    $readmemh(path, acc_mem, 0, count - 1);
    $sformat(path, "%0s/output.hex", dir);
    load_check(path, count, words);
    if (setup_failed) disable setup;
    $readmemh(path, expected_mem, 0, count - 1);
    $sformat(path, "%0s/shift.hex", dir);
    load_check(path, channels, words);
    if (setup_failed) disable setup;
    $readmemh(path, shift_mem, 0, channels - 1);
    $sformat(path, "%0s/multiplier.hex", dir);
    load_check(path, -1, params);
    if (setup_failed) disable setup;
    if (params != 1 && params != channels) begin
      $fatal(1, "%0s: %0d values, expected 1 (per layer) or %0d (per channel)", path, params, channels);
      disable setup;
    end
    $readmemh(path, mult_mem, 0, params - 1);
    $sformat(path, "%0s/exponent.hex", dir);
    load_check(path, params, words);
    if (setup_failed) disable setup;
    $readmemh(path, expo_mem, 0, params - 1);

    // The unit's domain (requant_unit.v); npuq's golden sets always satisfy it.
    for (i = 0; i < params; i = i + 1) begin
      if (mult_mem[i] < 0 || (mult_mem[i] != 0 && mult_mem[i] < 32'sh4000_0000)) begin
        $fatal(1, "%0s/multiplier.hex: value %0d is %0d, not 0 or in [2^30, 2^31)", dir, i, mult_mem[i]);
        disable setup;
      end
      if (expo_mem[i] < -31 || expo_mem[i] > 30) begin
        $fatal(1, "%0s/exponent.hex: value %0d is %0d, not in [-31, 30]", dir, i, expo_mem[i]);
        disable setup;
      end
    end
    for (i = 0; i < channels; i = i + 1) begin
      if (shift_mem[i] > 15) begin
        $fatal(1, "%0s/shift.hex: value %0d is %0d, not in [0, 15]", dir, i, shift_mem[i]);
        disable setup;
      end
    end

    $display("tb_file: %0s: %0d accumulators, %0d channels, %0s, %0s rounding, z=%0d clamp [%0d, %0d], %0s unit",
             dir, count, channels, params == 1 ? "per-layer" : "per-channel", rounding_name, zero_point, act_min,
             act_max, broken != 0 ? "BROKEN_ROUNDING" : "good");
    in_zp = zero_point[7:0];
    in_min = act_min[7:0];
    in_max = act_max[7:0];
    loaded = 1'b1;
  end

  // ------------------------------------------------------------------------------------------ stimulus
  // One accumulator per clock, element k on channel k % C (NHWC: the channel is the fastest axis). Driven
  // with non-blocking assignments from a clocked block, as a synchronous upstream stage would.
  integer ch, pi;
  initial begin
    sent = 0;
    cycle = 0;
    first_edge = 0;
  end

  always @(posedge clk) begin
    cycle <= cycle + 1;
    rst <= !loaded;
    if (!rst && sent < count) begin
      ch = sent % channels;
      pi = (params == 1) ? 0 : ch;
      if (sent == 0) first_edge <= cycle + 1;  // the clock edge on which the unit takes element 0
      in_valid <= 1'b1;
      in_acc <= acc_mem[sent];
      in_mult <= mult_mem[pi];
      in_expo <= expo_mem[pi][5:0];
      in_shift <= shift_mem[ch][3:0];
      sent <= sent + 1;
    end else begin
      in_valid <= 1'b0;
    end
  end

  // ---------------------------------------------------------------------------------------- scoreboard
  initial begin
    received = 0;
    mismatches = 0;
    done = 1'b0;
  end

  always @(posedge clk) begin
    if (!rst && dut_valid && !done) begin
      // element k is taken on edge first_edge + k and its result is seen LATENCY edges later
      if (cycle != first_edge + received + LATENCY)
        $fatal(1, "output %0d seen on clock %0d, expected %0d (latency %0d)", received, cycle,
               first_edge + received + LATENCY, LATENCY);
      result_mem[received] = dut_out;
      if (dut_out !== expected_mem[received]) begin
        mismatches = mismatches + 1;
        if (mismatches <= max_report)
          $display("MISMATCH index %0d channel %0d: expected %0d, got %0d (acc %0d)", received,
                   received % channels, expected_mem[received], dut_out, acc_mem[received]);
      end
      received = received + 1;
    end
    if (loaded && !done && received == count) begin
      done = 1'b1;
      if (dump) $writememh(dump_path, result_mem, 0, count - 1);
      if (mismatches == 0) begin
        $display("PASS %0d", count);
        $finish;
      end else begin
        $display("FAIL %0d of %0d", mismatches, count);
        $fatal(1, "%0d of %0d outputs differ from %0s/output.hex", mismatches, count, dir);
      end
    end
    if (loaded && !done && cycle > count + 100 + LATENCY) begin
      done = 1'b1;
      $fatal(1, "timeout: %0d of %0d outputs after %0d clocks", received, count, cycle);
    end
  end
endmodule

`default_nettype wire
