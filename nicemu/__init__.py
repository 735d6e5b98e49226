"""nicemu: the hardware side of dispatch-emu (wire, NIC, traffic generator)."""
