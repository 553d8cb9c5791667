// moepim_matrix_bank: behavioural model of one weight matrix of every expert of a group, tiled
// over crossbars, with one peripheral set per tile position (the analog core of a
// moepim.hw.matrix_bank.MatrixBank).
//
// Tile (rt, ct) of the matrix of expert slot s is one N_ROWS x N_COLUMNS crossbar; the
// N_SLOTS crossbars at tile position (rt, ct) share that position's peripheral set (DACs,
// column-muxed ADCs, shift-and-add, output buffer), so one expert slot is evaluated at a time
// and all ROW_TILES x COL_TILES positions work in parallel. Each tile computes exactly what
// moepim.models.tile.tile_mvm computes (and what the PeripheralSet RTL computes): bit-serial
// signed inputs, cells per WEIGHT_ENCODING ("offset": w + 2**(WEIGHT_BITS-1) sliced;
// "reference_column": the same minus a column of mid-scale cells 2**(BITS_PER_CELL-1), before
// the ADC; "differential": positive and negative parts in column pairs 2l, 2l+1, subtracted
// before the ADC), ADC code = clip(line >> shift, CODE_MIN, CODE_MAX) (unsigned ADC_BITS for
// offset, signed for the others), shift-and-add, slice combine, offset correction. The shift
// is ADC_SHIFT, or with ADC_RANGE "calibrated" the slot's run-time window: one 64-bit word
// per slot after the cells in the bank file, byte j the shift of weight slice j.
//
// In an exported netlist this module is a black box; this file is its simulation model (for
// the Verilator and Icarus runs).
//
// Cells are loaded at the first rising clock edge from a binary file named by the plusarg
// +MOEPIM_BANK<bank_id>=<path> (bank_id is an input tied to a constant by the parent, so one
// expert-engine module serves every group): each crossbar row as WORDS 64-bit big-endian
// words, PACK cells per word (cell c of the row in word c / PACK at bits
// (c % PACK)*SUM_BITS, unused lanes zero), rows in the order
//   ((slot*ROW_TILES + rt)*COL_TILES + ct)*N_ROWS + r
// (moepim.models.pim.bank_file_words). SUM_BITS holds a column's sum over all rows, so the
// MVM adds PACK column sums at once without carries between them. Without the plusarg the
// cells stay zero.
//
// Per rising edge:
//   in_we    : input lanes in_addr*LANES .. +LANES-1 take in_data (LANES signed INPUT_BITS
//              values, lane 0 in the low bits). Inputs beyond N_IN are ignored.
//   start    : one MVM of expert slot `slot` on the held input vector; `done` is high in the
//              cycle LATENCY edges later (the tile's handshake-to-result latency); the output
//              buffer holds the new results from then on. start while busy is ignored.
//   rd_addr  : rd_data takes outputs rd_addr*LANES .. +LANES-1, each as ROW_TILES partial
//              sums (one per row tile, OUT_BITS signed; lane l row tile k at
//              (l*ROW_TILES + k)*OUT_BITS). Outputs beyond the matrix read as zero.
// Counter `dac_drives`: word-line pulses, one per '1' input bit per tile position.
`default_nettype none
// analog macro: its internals are not digital nets (no switching-activity trace)
/* verilator tracing_off */
module moepim_matrix_bank #(
    parameter integer N_ROWS        = 256,
    parameter integer N_COLUMNS     = 256,
    parameter integer BITS_PER_CELL = 8,
    parameter integer WEIGHT_ENCODING = 0,        // 0 "offset", 1 "differential", 2 "reference_column"
    parameter integer ADC_RANGE     = 0,          // 0 "fixed", 1 "calibrated"
    parameter integer WEIGHT_BITS   = 8,
    parameter integer INPUT_BITS    = 8,
    parameter integer ADC_BITS      = 8,
    parameter integer ADC_SHIFT     = 8,
    parameter integer ROW_TILES     = 1,
    parameter integer COL_TILES     = 1,
    parameter integer N_SLOTS       = 1,
    parameter integer N_IN          = 256,
    parameter integer N_OUT         = 256,
    parameter integer LANES         = 16,
    parameter integer OUT_BITS      = 26,
    parameter integer LATENCY       = 68,
    parameter integer SLOT_BITS     = 1,
    parameter integer IN_ADDR_BITS  = 4,
    parameter integer OUT_ADDR_BITS = 4,
    parameter integer COUNTER_BITS  = 48
) (
    input  wire                                    clk,
    input  wire                                    rst,
    input  wire [15:0]                             bank_id,
    input  wire                                    in_we,
    input  wire [IN_ADDR_BITS-1:0]                 in_addr,
    input  wire [LANES*INPUT_BITS-1:0]             in_data,
    input  wire                                    start,
    input  wire [SLOT_BITS-1:0]                    slot,
    output reg                                     busy,
    output reg                                     done,
    input  wire [OUT_ADDR_BITS-1:0]                rd_addr,
    output reg  [LANES*ROW_TILES*OUT_BITS-1:0]     rd_data,
    output reg  [COUNTER_BITS-1:0]                 dac_drives
);
    // The behavioural model is for simulation only: synthesis (Yosys defines SYNTHESIS)
    // reads the port list of this black box and nothing else.
`ifndef SYNTHESIS
    localparam integer SPW      = WEIGHT_BITS / BITS_PER_CELL;
    localparam integer CPL      = (WEIGHT_ENCODING == 1) ? 2 : 1;  // columns per line
    localparam integer SIGNED   = (WEIGHT_ENCODING == 0) ? 0 : 1;
    localparam integer N_OUTS   = N_COLUMNS / CPL / SPW;      // outputs per tile
    localparam integer REFC     = (WEIGHT_ENCODING == 2) ? (1 << (BITS_PER_CELL - 1)) : 0;
    localparam integer SLICE_SUM = ((1 << WEIGHT_BITS) - 1) / ((1 << BITS_PER_CELL) - 1);
    localparam integer N_WIN    = (ADC_RANGE == 1) ? N_SLOTS : 0;  // window words
    localparam integer SUM_BITS = $clog2(N_ROWS * ((1 << BITS_PER_CELL) - 1) + 1);
    localparam integer PACK     = 64 / SUM_BITS;              // column sums per word
    localparam integer WORDS    = (N_COLUMNS + PACK - 1) / PACK;   // words per crossbar row
    localparam integer TILE     = N_ROWS * WORDS;             // words per crossbar
    localparam integer N_WORDS  = N_SLOTS * ROW_TILES * COL_TILES * TILE;
    localparam integer IN_PAD   = ROW_TILES * N_ROWS;
    localparam integer OUT_PAD  = COL_TILES * N_OUTS;
    localparam signed [63:0] CODE_MAX = (SIGNED != 0) ? ((64'sd1 <<< (ADC_BITS - 1)) - 64'sd1)
                                                      : ((64'sd1 <<< ADC_BITS) - 64'sd1);
    localparam signed [63:0] CODE_MIN = (SIGNED != 0) ? -(64'sd1 <<< (ADC_BITS - 1)) : 64'sd0;
    localparam integer HALF_W   = 1 << (WEIGHT_BITS - 1);
    // the combine step's offset correction, times sum(x)
    localparam integer OFFSET_CORR = (WEIGHT_ENCODING == 1) ? 0
                                     : HALF_W - REFC * SLICE_SUM;

    reg [63:0]                   cells   [0:N_WORDS+N_WIN];   // + 1 spare: never empty
    reg signed [INPUT_BITS-1:0]  x       [0:IN_PAD-1];
    reg signed [63:0]            results [0:ROW_TILES*OUT_PAD-1];  // [o*ROW_TILES + rt]
    reg [63:0]                   colsum  [0:INPUT_BITS*WORDS-1];   // packed like cells
    reg [31:0]                   count;

    // loop temporaries of the behavioural MVM: blocking on purpose
    /* verilator lint_off BLKSEQ */
    integer i, l, k, rt, ct, r, w, b, j, o, base, fd, got, cidx;
    reg [INPUT_BITS-1:0]  xu;
    reg signed [63:0]     acc, col, conv, xsum;
    reg [63:0]            ones;
    reg [63:0]            pones [0:INPUT_BITS-1];   // '1' bits per plane (reference column)
    reg signed [63:0]     line;
    integer               sh;
    /* verilator lint_off UNUSEDSIGNAL */
    reg [63:0]            win;        // a slot's window word shifted: its slice's byte is [7:0]
    /* verilator lint_on UNUSEDSIGNAL */
    reg [8*1024-1:0]      path;
    reg [63:0]            code;
    reg [LANES*ROW_TILES*OUT_BITS-1:0] rd_next;

    reg                          loaded;

    initial begin
        for (i = 0; i <= N_WORDS + N_WIN; i = i + 1) cells[i] = 64'd0;
        for (i = 0; i < IN_PAD; i = i + 1) x[i] = {INPUT_BITS{1'b0}};
        for (i = 0; i < ROW_TILES*OUT_PAD; i = i + 1) results[i] = 64'sd0;
        loaded = 1'b0;
    end

    // the cell image of this bank, once, at the first rising edge (bank_id is settled then)
    task automatic load_cells;
        begin
            if ($value$plusargs($sformatf("MOEPIM_BANK%0d=%%s", bank_id), path)) begin
                fd = $fopen(path, "rb");
                if (fd == 0) begin
                    $display("moepim_matrix_bank %0d: cannot open %0s", bank_id, path);
                    $finish;
                end
                got = $fread(cells, fd);
                $fclose(fd);
                if (got != 8 * (N_WORDS + N_WIN)) begin
                    $display("moepim_matrix_bank %0d: %0s holds %0d bytes, the bank needs %0d (%0d packed cell words, %0d ADC window words)",
                             bank_id, path, got, 8 * (N_WORDS + N_WIN), N_WORDS, N_WIN);
                    $finish;
                end
            end
            loaded = 1'b1;
        end
    endtask

    // one tile-position MVM for every (rt, ct) of expert slot s, into results
    task automatic mvm(input integer s);
        begin
            ones = 64'd0;
            for (rt = 0; rt < ROW_TILES; rt = rt + 1) begin
                xsum = 64'sd0;
                for (b = 0; b < INPUT_BITS; b = b + 1) pones[b] = 64'd0;
                for (r = 0; r < N_ROWS; r = r + 1) begin
                    xsum = xsum + {{(64-INPUT_BITS){x[rt*N_ROWS + r][INPUT_BITS-1]}}, x[rt*N_ROWS + r]};
                    xu = x[rt*N_ROWS + r];
                    for (b = 0; b < INPUT_BITS; b = b + 1)
                        if (xu[b]) begin
                            ones = ones + 1;
                            pones[b] = pones[b] + 1;
                        end
                end
                for (ct = 0; ct < COL_TILES; ct = ct + 1) begin
                    base = ((s*ROW_TILES + rt)*COL_TILES + ct)*TILE;
                    for (i = 0; i < INPUT_BITS*WORDS; i = i + 1) colsum[i] = 64'd0;
                    // analog column sums, per bit plane (PACK columns per addition)
                    for (r = 0; r < N_ROWS; r = r + 1) begin
                        xu = x[rt*N_ROWS + r];
                        if (xu != 0)
                            for (b = 0; b < INPUT_BITS; b = b + 1)
                                if (xu[b])
                                    for (w = 0; w < WORDS; w = w + 1)
                                        colsum[b*WORDS + w] = colsum[b*WORDS + w]
                                            + cells[base + r*WORDS + w];
                    end
                    // ADC, shift-and-add over planes and slices, offset correction
                    for (o = 0; o < N_OUTS; o = o + 1) begin
                        acc = 64'sd0;
                        for (j = 0; j < SPW; j = j + 1) begin
                            col = 64'sd0;
                            cidx = (o*SPW + j) * CPL;
                            if (N_WIN > 0) begin
                                win = (cells[N_WORDS + s] >> (8*j)) & 64'hff;
                                sh = win[31:0];
                            end else
                                sh = ADC_SHIFT;
                            for (b = 0; b < INPUT_BITS; b = b + 1) begin
                                // the line sum: the column (minus the reference column), or
                                // the differential pair's difference
                                line = $signed((colsum[b*WORDS + cidx / PACK] >> ((cidx % PACK) * SUM_BITS))
                                               & ((64'd1 << SUM_BITS) - 64'd1));
                                if (CPL == 2)
                                    line = line - $signed((colsum[b*WORDS + (cidx + 1) / PACK]
                                                           >> (((cidx + 1) % PACK) * SUM_BITS))
                                                          & ((64'd1 << SUM_BITS) - 64'd1));
                                line = line - REFC * $signed(pones[b]);
                                code = line >>> sh;
                                if ($signed(code) > CODE_MAX) code = CODE_MAX;
                                if ($signed(code) < CODE_MIN) code = CODE_MIN;
                                conv = $signed(code) <<< (sh + b);
                                if (b == INPUT_BITS - 1) col = col - conv;
                                else col = col + conv;
                            end
                            acc = acc + (col <<< (j*BITS_PER_CELL));
                        end
                        results[(ct*N_OUTS + o)*ROW_TILES + rt] = acc - OFFSET_CORR * xsum;
                    end
                end
            end
            ones = ones * COL_TILES;
            dac_drives <= dac_drives + ones[COUNTER_BITS-1:0];
        end
    endtask

    always @(posedge clk) begin
        if (!loaded) load_cells;
        if (rst) begin
            busy <= 1'b0;
            done <= 1'b0;
            count <= 32'd0;
            dac_drives <= {COUNTER_BITS{1'b0}};
        end else begin
            done <= 1'b0;
            if (start && !busy) begin
                mvm({{(32-SLOT_BITS){1'b0}}, slot});
                busy <= 1'b1;
                count <= 32'd1;
            end else if (busy) begin
                count <= count + 32'd1;
                if (count == LATENCY - 1) begin
                    busy <= 1'b0;
                    done <= 1'b1;
                end
            end
        end
        // Blocking writes into loop-indexed arrays (plain for both simulators): the MVM above
        // has already read x, and no other process reads x or rd_next, so this is the same as
        // non-blocking edge semantics.
        if (in_we)
            for (l = 0; l < LANES; l = l + 1)
                if (in_addr*LANES + l < N_IN)
                    x[in_addr*LANES + l] = in_data[l*INPUT_BITS +: INPUT_BITS];
        for (l = 0; l < LANES; l = l + 1)
            for (k = 0; k < ROW_TILES; k = k + 1)
                rd_next[(l*ROW_TILES + k)*OUT_BITS +: OUT_BITS] =
                    (rd_addr*LANES + l < N_OUT) ? results[(rd_addr*LANES + l)*ROW_TILES + k][OUT_BITS-1:0]
                                                : {OUT_BITS{1'b0}};
        rd_data <= rd_next;
    end
    /* verilator lint_on BLKSEQ */
`endif
endmodule
`default_nettype wire
