"""The route unit's first stage: :class:`GateFrontEnd` (the gate MVM and its logits) and
:class:`SharedGate` (the sigmoid gate of a model's shared expert).

``GateFrontEnd``: the gate matrix (``d_model x n_cols``) on its own crossbars, a one-slot
:class:`~moepim.hw.matrix_bank.MatrixBank` with its own peripheral sets; partial-sum adders
give the integer logits (``moepim.models.quant.gate_logits_int`` with the crossbar
arithmetic). An MLP gate (``gate_hidden`` > 0, LLaMA-MoE's ``W_2 tanh(W_1 x)``) has two
one-slot banks: ``W_1`` (``d_model x gate_hidden``, cell image ``bank_id``), whose partial
sums are requantised (``hidden_mult``/``hidden_shift``, clamped to ``input_bits``) and looked
up in the tanh table (``2**input_bits`` entries, table 0), ``lanes`` per cycle, into the
input of ``W_2`` (``gate_hidden x n_cols``, cell image ``bank_id + 1``), whose partial sums
are the logits. With ``shared_gate`` the bank has one more column, the shared expert's
logit, turned into its gate weight by a :class:`SharedGate` (table 1).

Protocol: the parent writes the token's vector into the gate bank (``in_we``/``in_addr``/
``in_data``), then hands the token over on ``i_tokens`` (token index, ``last``);
``i_tokens.ready`` is high only while the front end is idle. The token's logits leave on
``o_logits`` (``token``, ``last``, ``logits``, ``shared_weight``), held until taken; the
front end takes the next token only after. Tables are written through ``lut_we``/
``lut_table``/``lut_addr``/``lut_data`` before the run (address ``code + 2**(input_bits-1)``).

Cycles (``moepim.spec.timing.RouteTiming.gate``): ``L + OB + 2`` from the cycle after the
``i_tokens`` handshake to ``o_logits.valid`` (start, the gate MVM of ``L = mvm_latency``
cycles, ``OB`` logit blocks read); an MLP gate: ``L1 + HB + L2 + OB + 3`` (``HB`` hidden
blocks between the banks).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need, need_positive, signed_bits
from moepim.spec.tile import TileSpec

from .expert_engine import SHIFT_BITS, requantize
from .matrix_bank import BANK_ID_BITS, MatrixBank
from .params import check_counter_bits, check_multiplier_bits, check_tile, tree_sum

__all__ = ["GateFrontEnd", "SharedGate", "logits_layout", "TABLE_TANH", "TABLE_SIGMOID"]

TABLE_TANH, TABLE_SIGMOID = 0, 1        # ``lut_table`` of the run-time tables


def logits_layout(*, n_experts: int, n_tokens: int, logit_bits: int, gate_bits: int):
    """A token's logits as the gate hands them to the router stage."""
    return data.StructLayout({
        "token": unsigned(index_bits(n_tokens)), "last": 1,
        "logits": data.ArrayLayout(signed(logit_bits), n_experts),
        "shared_weight": unsigned(gate_bits)})


def table_code(value, bits: int):
    """Table address of a signed ``bits``-bit code."""
    return (value + (1 << (bits - 1)))[:bits]


def lut_ports(*, input_bits: int, gate_bits: int) -> dict:
    """The run-time tables' write port (``lut_table``: ``TABLE_TANH`` or ``TABLE_SIGMOID``)."""
    return {"lut_we": In(1), "lut_table": In(1), "lut_addr": In(unsigned(input_bits)),
            "lut_data": In(signed(max(input_bits, gate_bits + 1)))}


def add_table(m, name: str, shape, bits: int, ports, index: int):
    """A run-time table of ``2**bits`` entries (``lut_table == index``) and its write port."""
    mem = memory.Memory(shape=shape, depth=1 << bits, init=[])
    m.submodules[name] = mem
    wp = mem.write_port()
    m.d.comb += [wp.en.eq(ports.lut_we & (ports.lut_table == index)),
                 wp.addr.eq(ports.lut_addr), wp.data.eq(ports.lut_data)]
    return mem


class SharedGate(wiring.Component):
    """The shared expert's gate weight: ``sigmoid(requant(logit))`` from a run-time table of
    ``2**input_bits`` entries of ``gate_bits`` (``moepim.models.quant.shared_gate_int``),
    combinational from ``logit`` to ``weight``."""

    def __init__(self, *, logit_bits: int, input_bits: int, gate_bits: int,
                 multiplier_bits: int):
        for name, value in (("logit_bits", logit_bits), ("input_bits", input_bits),
                            ("gate_bits", gate_bits)):
            need_positive(name, value)
        check_multiplier_bits(multiplier_bits)
        self._input_bits, self._gate_bits = input_bits, gate_bits
        super().__init__({
            "logit": In(signed(logit_bits)),
            "mult": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(SHIFT_BITS)),
            **lut_ports(input_bits=input_bits, gate_bits=gate_bits),
            "weight": Out(unsigned(gate_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        ab = self._input_bits
        sig = add_table(m, "sigmoid", unsigned(self._gate_bits), ab, self, TABLE_SIGMOID)
        rp = sig.read_port(domain="comb")
        m.d.comb += [rp.addr.eq(table_code(requantize(self.logit, self.mult, self.shift, ab),
                                           ab)),
                     self.weight.eq(rp.data)]
        return m


class GateFrontEnd(wiring.Component):
    def __init__(self, *, d_model: int, n_experts: int, n_tokens: int, lanes: int,
                 tile: TileSpec, gate_bits: int = 8, gate_hidden: int = 0,
                 shared_gate: bool = False, multiplier_bits: int = 15, counter_bits=48):
        for name, value in (("d_model", d_model), ("n_experts", n_experts),
                            ("n_tokens", n_tokens), ("lanes", lanes)):
            need_positive(name, value)
        need(gate_hidden >= 0, "gate_hidden", gate_hidden,
             "0 (a linear gate) or the MLP gate's hidden width")
        need(not (gate_hidden and shared_gate), "shared_gate", shared_gate,
             "False with an MLP gate (the shared gate reads the token, not the hidden layer)")
        check_tile(tile)
        check_counter_bits(counter_bits)
        check_multiplier_bits(multiplier_bits)
        input_bits = tile.input_bits
        self._n, self._lanes, self._hidden, self._shared = (n_experts, lanes, gate_hidden,
                                                            bool(shared_gate))
        self._act_bits, self._gate_bits = input_bits, gate_bits
        n_cols = n_experts + self._shared       # the shared gate's column after the experts'
        bank = dict(n_slots=1, lanes=lanes, tile=tile, counter_bits=counter_bits)
        # bank: the gate (or the MLP gate's first layer); logit_bank: the one giving logits
        self.bank = MatrixBank(n_in=d_model, n_out=gate_hidden or n_cols, **bank)
        self.bank2 = (MatrixBank(n_in=gate_hidden, n_out=n_cols, **bank)
                      if gate_hidden else None)
        self.logit_bank = self.bank2 or self.bank
        lim = 1 << (self.logit_bank.geometry.output_bits - 1)
        rt = self.logit_bank.row_tiles
        self._logit_bits = signed_bits(-lim * rt, (lim - 1) * rt)
        self.shared = (SharedGate(logit_bits=self._logit_bits, input_bits=input_bits,
                                  gate_bits=gate_bits, multiplier_bits=multiplier_bits)
                       if self._shared else None)
        for sub in (self.bank, self.bank2, self.shared):   # a cached build never elaborates
            if sub is not None:
                sub._MustUse__silence = True
        c = unsigned(counter_bits)
        ports = {}
        if gate_hidden:
            ports.update(hidden_mult=In(unsigned(multiplier_bits)),
                         hidden_shift=In(unsigned(SHIFT_BITS)))
        if self._shared:
            ports.update(shared_mult=In(unsigned(multiplier_bits)),
                         shared_shift=In(unsigned(SHIFT_BITS)))
        if gate_hidden or self._shared:
            ports.update(lut_ports(input_bits=input_bits, gate_bits=gate_bits))
        super().__init__({
            "bank_id": In(BANK_ID_BITS),
            **ports,
            "in_we": In(1),
            "in_addr": In(index_bits(self.bank.in_blocks)),
            "in_data": In(data.ArrayLayout(signed(input_bits), lanes)),
            "i_tokens": In(stream.Signature(data.StructLayout({
                "token": unsigned(index_bits(n_tokens)), "last": 1}))),
            "o_logits": Out(stream.Signature(logits_layout(
                n_experts=n_experts, n_tokens=n_tokens, logit_bits=self._logit_bits,
                gate_bits=gate_bits))),
            "counters": Out(data.StructLayout({"gate_mvms": c, "gate_dac_drives": c})),
        })

    logit_bits = property(lambda self: self._logit_bits)
    gate_bits = property(lambda self: self._gate_bits)
    gate_hidden = property(lambda self: self._hidden)
    shared_gate = property(lambda self: self._shared)
    has_tables = property(lambda self: bool(self._hidden or self._shared))
    banks = property(lambda self: [b for b in (self.bank, self.bank2) if b is not None])

    def elaborate(self, platform):
        m = Module()
        n, lanes, bank, lb = self._n, self._lanes, self.bank, self.logit_bank
        m.submodules.gate_bank = bank
        cnt, out = self.counters, self.o_logits
        m.d.comb += [bank.bank_id.eq(self.bank_id), bank.in_we.eq(self.in_we),
                     bank.in_addr.eq(self.in_addr), bank.in_data.eq(self.in_data),
                     bank.slot.eq(0),
                     cnt.gate_dac_drives.eq(tree_sum(b.dac_drives for b in self.banks))]

        # the logits: partial sums of the logit bank's row tiles, block by block
        logits = out.payload.logits
        shared_logit = Signal(signed(self._logit_bits))
        blk = Signal(range(max(bank.out_blocks, lb.out_blocks) + 2))
        got = Signal()                       # lb.rd_data holds block blk - 1
        for b in range(lb.out_blocks):
            with m.If(got & (blk == b + 1)):
                for i in range(lanes):
                    e = b * lanes + i
                    dst = logits[e] if e < n else shared_logit if e == n and self._shared \
                        else None
                    if dst is not None:
                        m.d.sync += dst.eq(tree_sum(lb.rd_data[i][r]
                                                    for r in range(lb.row_tiles)))
        m.d.comb += [b.rd_addr.eq(blk) for b in self.banks]

        hidden_we = Signal()
        if self.bank2 is not None:
            self._hidden_layer(m, blk, hidden_we)
        if self.shared is not None:
            sg = self.shared
            m.submodules.shared_gate = sg
            m.d.comb += [sg.logit.eq(shared_logit), sg.mult.eq(self.shared_mult),
                         sg.shift.eq(self.shared_shift), sg.lut_we.eq(self.lut_we),
                         sg.lut_table.eq(self.lut_table), sg.lut_addr.eq(self.lut_addr),
                         sg.lut_data.eq(self.lut_data), out.payload.shared_weight.eq(sg.weight)]

        with m.FSM(name="gate"):
            with m.State("IDLE"):
                m.d.comb += self.i_tokens.ready.eq(1)
                with m.If(self.i_tokens.valid):
                    m.d.sync += [out.payload.token.eq(self.i_tokens.payload.token),
                                 out.payload.last.eq(self.i_tokens.payload.last)]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += bank.start.eq(1)
                m.d.sync += [cnt.gate_mvms.eq(cnt.gate_mvms + 1), blk.eq(0), got.eq(0)]
                m.next = "MVM"
            with m.State("MVM"):
                with m.If(bank.done):
                    m.next = "LOGITS"
                    if self.bank2 is not None:
                        m.d.sync += blk.eq(1)           # block 0 is being read
                        m.next = "HIDDEN"
            if self.bank2 is not None:
                with m.State("HIDDEN"):
                    m.d.comb += hidden_we.eq(1)
                    m.d.sync += blk.eq(blk + 1)
                    with m.If(blk == bank.out_blocks):
                        m.next = "START2"
                with m.State("START2"):
                    m.d.comb += self.bank2.start.eq(1)
                    m.d.sync += [blk.eq(0), got.eq(0)]
                    m.next = "MVM2"
                with m.State("MVM2"):
                    with m.If(self.bank2.done):
                        m.next = "LOGITS"
            with m.State("LOGITS"):
                # read block blk; its data arrives next cycle (got)
                m.d.sync += [blk.eq(blk + 1), got.eq(1)]
                with m.If(blk == lb.out_blocks):
                    m.next = "HANDOFF"
            with m.State("HANDOFF"):
                # held until the router stage takes the token
                m.d.comb += out.valid.eq(1)
                with m.If(out.ready):
                    m.next = "IDLE"
        return m

    def _hidden_layer(self, m, blk, hidden_we):
        """MLP gate: the first layer's partial sums, requantised, through the tanh table into
        the second layer's input, one block per cycle (block ``blk - 1`` while reading
        ``blk``)."""
        bank, b2, lanes, ab = self.bank, self.bank2, self._lanes, self._act_bits
        hb = bank.out_blocks
        m.submodules.gate_bank2 = b2
        lut = add_table(m, "tanh", signed(ab), ab, self, TABLE_TANH)
        m.d.comb += [b2.bank_id.eq(self.bank_id + 1),
                     b2.slot.eq(0), b2.in_we.eq(hidden_we), b2.in_addr.eq(blk - 1)]
        for i in range(lanes):
            h = requantize(tree_sum(bank.rd_data[i][r] for r in range(bank.row_tiles)),
                           self.hidden_mult, self.hidden_shift, ab)
            rp = lut.read_port(domain="comb")
            m.d.comb += rp.addr.eq(table_code(h, ab))
            if (hb - 1) * lanes + i < self._hidden:
                m.d.comb += b2.in_data[i].eq(rp.data)
            else:                        # past the hidden width in the last block
                m.d.comb += b2.in_data[i].eq(Mux(blk == hb, 0, rp.data))
