"""Port maps of exported components: Verilog port names, widths and payload field maps."""

from __future__ import annotations

from amaranth import Shape, Value
from amaranth.lib import data, wiring

__all__ = ["port_map", "flat_fields"]


def flat_fields(layout, prefix: str = "", offset: int = 0) -> dict:
    """``{dotted.name: [offset, width, count, signed]}``, with arrays of scalars kept whole."""
    out = {}
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            out.update(flat_fields(field.shape, f"{prefix}{name}.", offset + field.offset))
    elif isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        if isinstance(elem, data.Layout):
            for i in range(layout.length):
                out.update(flat_fields(elem, f"{prefix}{i}.", offset + i * elem.size))
        else:
            s = Shape.cast(elem)
            out[prefix.rstrip(".")] = [offset, s.width, layout.length, s.signed]
    else:
        s = Shape.cast(layout)
        out[prefix.rstrip(".")] = [offset, s.width, 0, s.signed]
    return out


def port_map(component: wiring.Component) -> list[dict]:
    """Ports of a component as exported to Verilog: name, direction, width, payload fields."""
    ports = []
    for path, member, value in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        entry = {"name": name, "direction": "input" if member.flow == wiring.In else "output",
                 "width": len(Value.cast(value))}
        if isinstance(value, data.View):
            entry["fields"] = flat_fields(value.shape())
        ports.append(entry)
    return ports
