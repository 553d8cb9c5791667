// moepim_xbar_macro: behavioural model of the crossbar-array macro (analog core).
//
// In an exported netlist this module is a black box (a hard macro); this file is the
// simulation model used by Verilator and Icarus. It must stay cycle- and bit-identical to the
// "logic" core of moepim.hw.crossbar.CrossbarArray (a test checks it).
//
// Per rising edge:
//   we      : cell row `wrow` takes `wdata` (N_COLUMNS cells of BITS_PER_CELL bits, column 0 in
//             the low bits).
//   convert : for each ADC a, sums[a] <= line(a*CPA + col), using the plane held before this
//             edge (sample-and-hold + column mux). line(l) is, per WEIGHT_ENCODING:
//             "offset": sum over rows r of plane[r] * cells[r][l] (unsigned);
//             "reference_column": that minus the reference column of mid-scale cells,
//             2**(BITS_PER_CELL-1) * popcount(plane) (signed);
//             "differential": the column pair 2l (positive) minus 2l+1 (negative) (signed).
//             The subtraction is analog, before the ADC.
//   drive   : the held plane takes `wl` (one input bit plane on the word lines).
// Cells are not reset (like an SRAM/RRAM array); the plane and the sums are.
`default_nettype none
// analog macro: its internals are not digital nets (no switching-activity trace)
/* verilator tracing_off */
module moepim_xbar_macro #(
    parameter integer N_ROWS        = 256,
    parameter integer N_COLUMNS     = 256,
    parameter integer BITS_PER_CELL = 8,
    parameter integer N_ADCS        = 32,
    parameter integer SUM_BITS      = 16,
    parameter integer WEIGHT_ENCODING = 0,        // 0 "offset", 1 "differential", 2 "reference_column"
    parameter integer ROW_BITS      = 8,
    parameter integer COL_BITS      = 3
) (
    input  wire                                clk,
    input  wire                                rst,
    input  wire                                we,
    input  wire [ROW_BITS-1:0]                 wrow,
    input  wire [N_COLUMNS*BITS_PER_CELL-1:0]  wdata,
    input  wire                                drive,
    input  wire [N_ROWS-1:0]                   wl,
    input  wire                                convert,
    input  wire [COL_BITS-1:0]                 col,
    output reg  [N_ADCS*SUM_BITS-1:0]          sums
);
    // The behavioural model is for simulation only: synthesis (Yosys defines SYNTHESIS)
    // reads the port list of this black box and nothing else.
`ifndef SYNTHESIS
    localparam integer CPL = (WEIGHT_ENCODING == 1) ? 2 : 1;  // columns per line
    localparam integer CPA = N_COLUMNS / CPL / N_ADCS;
    localparam integer REF = (WEIGHT_ENCODING == 2) ? (1 << (BITS_PER_CELL - 1)) : 0;

    reg [BITS_PER_CELL-1:0] cells [0:N_ROWS*N_COLUMNS-1];
    reg [N_ROWS-1:0]        plane;
    reg [SUM_BITS-1:0]      acc;
    reg [SUM_BITS-1:0]      term;
    integer r, a, c, l;

    // acc and term are loop temporaries of the behavioural column sum: blocking on purpose.
    /* verilator lint_off BLKSEQ */
    always @(posedge clk) begin
        if (we) begin
            for (c = 0; c < N_COLUMNS; c = c + 1)
                cells[wrow*N_COLUMNS + c] <= wdata[c*BITS_PER_CELL +: BITS_PER_CELL];
        end
        if (rst) begin
            plane <= {N_ROWS{1'b0}};
            sums  <= {N_ADCS*SUM_BITS{1'b0}};
        end else begin
            if (convert) begin
                for (a = 0; a < N_ADCS; a = a + 1) begin
                    acc = {SUM_BITS{1'b0}};
                    l = (a*CPA + {{(32-COL_BITS){1'b0}}, col}) * CPL;
                    for (r = 0; r < N_ROWS; r = r + 1)
                        if (plane[r]) begin
                            term = {SUM_BITS{1'b0}};
                            term[BITS_PER_CELL-1:0] = cells[r*N_COLUMNS + l];
                            acc = acc + term;
                            if (CPL == 2) begin     // differential: minus the negative column
                                term = {SUM_BITS{1'b0}};
                                term[BITS_PER_CELL-1:0] = cells[r*N_COLUMNS + l + 1];
                                acc = acc - term;
                            end
                            acc = acc - REF[SUM_BITS-1:0];   // reference column (mod 2**SUM_BITS)
                        end
                    sums[a*SUM_BITS +: SUM_BITS] <= acc;
                end
            end
            if (drive)
                plane <= wl;
        end
    end
    /* verilator lint_on BLKSEQ */
`endif
endmodule
`default_nettype wire
