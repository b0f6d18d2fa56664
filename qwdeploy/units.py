"""Byte units, defined once. Quantities are int bytes everywhere; GiB is for people."""

MiB = 1 << 20
GiB = 1 << 30
GB = 10**9  # datasheet bandwidths are in decimal GB/s
