// moepim_sram: behavioural model of a one-write, one-read-port SRAM macro (the black box of a
// moepim.hw.sram.Sram with core "macro").
//
// Per rising edge: w_en writes w_data to row w_addr; r_en loads r_data with row r_addr as it
// was before this edge (non-transparent read), else r_data holds. Rows start at zero.
// In an exported netlist this module is a black box (Yosys prices it as WIDTH x DEPTH bits
// of SRAM); this file is its simulation model.
`default_nettype none
// a memory macro: its array is not a digital net (its traffic is counted by the RTL)
/* verilator tracing_off */
module moepim_sram #(
    parameter integer WIDTH     = 8,
    parameter integer DEPTH     = 16,
    parameter integer ADDR_BITS = 4
) (
    input  wire                 clk,
    input  wire                 w_en,
    input  wire [ADDR_BITS-1:0] w_addr,
    input  wire [WIDTH-1:0]     w_data,
    input  wire                 r_en,
    input  wire [ADDR_BITS-1:0] r_addr,
    output reg  [WIDTH-1:0]     r_data
);
`ifndef SYNTHESIS
    reg [WIDTH-1:0] rows [0:DEPTH-1];
    integer i;

    initial begin
        for (i = 0; i < DEPTH; i = i + 1) rows[i] = {WIDTH{1'b0}};
        r_data = {WIDTH{1'b0}};
    end

    always @(posedge clk) begin
        if (r_en) r_data <= rows[r_addr];
        if (w_en) rows[w_addr] <= w_data;
    end
`endif
endmodule
`default_nettype wire
