"""Classic pcap files (libpcap format), read and written without dependencies.

Only Ethernet captures (link type 1) are accepted, in either byte order, with
microsecond or nanosecond timestamps. pcapng is refused with a hint.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

LINKTYPE_ETHERNET = 1
MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A
SNAPLEN = 262144


class PcapError(Exception):
    """A capture file that cannot be read or written (one-line message)."""


@dataclass(frozen=True)
class PcapRecord:
    ts_sec: int
    ts_frac: int  # microseconds, or nanoseconds when the file says so
    data: bytes


@dataclass(frozen=True)
class Pcap:
    nanosecond: bool
    records: list[PcapRecord]


def read_pcap_file(path: str) -> Pcap:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise PcapError(f"{path}: cannot read: {e.strerror}") from None
    if len(blob) < 24:
        raise PcapError(f"{path}: not a pcap file (only {len(blob)} bytes)")
    (magic_le,) = struct.unpack("<I", blob[:4])
    if magic_le == PCAPNG_MAGIC:
        raise PcapError(f"{path}: pcapng is not supported; convert it with 'editcap -F pcap IN OUT'")
    for endian in "<>":
        (magic,) = struct.unpack(endian + "I", blob[:4])
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        raise PcapError(f"{path}: not a pcap file (bad magic 0x{magic_le:08x})")
    _, _, _, _, _, linktype = struct.unpack(endian + "HHiIII", blob[4:24])
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype} is not Ethernet (1)")
    header = struct.Struct(endian + "IIII")
    records = []
    pos = 24
    while pos < len(blob):
        if pos + 16 > len(blob):
            raise PcapError(f"{path}: truncated record header at byte {pos}")
        sec, frac, incl, _orig = header.unpack_from(blob, pos)
        pos += 16
        if incl > SNAPLEN or pos + incl > len(blob):
            raise PcapError(f"{path}: truncated or corrupt record at byte {pos - 16}")
        records.append(PcapRecord(sec, frac, blob[pos : pos + incl]))
        pos += incl
    return Pcap(nanosecond=magic == MAGIC_NS, records=records)


def read_pcap(path: str) -> list[PcapRecord]:
    return read_pcap_file(path).records


def write_pcap(path: str, records: Iterable[PcapRecord], nanosecond: bool = False) -> None:
    magic = MAGIC_NS if nanosecond else MAGIC_US
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
            for r in records:
                f.write(struct.pack("<IIII", r.ts_sec, r.ts_frac, len(r.data), len(r.data)))
                f.write(r.data)
    except OSError as e:
        raise PcapError(f"{path}: cannot write: {e.strerror}") from None
