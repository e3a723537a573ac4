"""Which of a zygote's pages a forked instance has copied, and which objects lie on them.

Run as root (page frame numbers are hidden from others), with a zygote started under
`NEST_ZYGOTE_DEBUG_DUMP=/tmp/dump` (`runtime/zygote.py` then writes `/tmp/dump.PID`, where its objects lie):

    python scripts/cow_pages.py ZYGOTE_PID CHILD_PID [--objects /tmp/dump.ZYGOTE_PID]

A child page is "copied" when the zygote maps a page at the same address but the frame differs (copy-on-write
broke), "new" when the zygote has none there (memory the child allocated), "shared" otherwise. Copied pages are
attributed to the objects on them: by the type holding most bytes of the page, and by objects whose bytes differ
between the two processes (a refcount or inline cache written). Prints one report, by region.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import struct
from pathlib import Path
from typing import NamedTuple

PAGE = 4096
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1


class Region(NamedTuple):
    start: int
    end: int
    name: str


class Obj(NamedTuple):
    address: int
    size: int
    kind: str
    owner: str


def regions(pid: int) -> list[Region]:
    """The anonymous, heap and libpython mappings: where copy-on-write copies of a zygote live."""
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        name = parts[5] if len(parts) > 5 else "anon"
        if name in ("anon", "[heap]") or ("libpython" in name and "w" in parts[1]):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found.append(Region(start, end, "libpython" if "libpython" in name else name.strip("[]")))
    return found


def frames(pid: int, region: Region) -> list[int]:
    """Page frame number per page of `region`, -1 where no page is present."""
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(region.start // PAGE * 8)
        raw = pagemap.read((region.end - region.start) // PAGE * 8)
    entries = struct.unpack(f"{len(raw) // 8}Q", raw)
    return [entry & PFN_MASK if entry & PRESENT else -1 for entry in entries]


def classify(zygote: int, child: int) -> dict[str, dict[str, list[int]]]:
    """Per region of the child: the addresses of its copied, new and shared pages."""
    result: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for region in regions(child):
        mine, theirs = frames(child, region), frames(zygote, region)
        theirs += [-1] * (len(mine) - len(theirs))
        for index, (frame, original) in enumerate(zip(mine, theirs, strict=True)):
            if frame < 0:
                continue
            state = "new" if original < 0 else "shared" if frame == original else "copied"
            result[region.name][state].append(region.start + index * PAGE)
    return result


def load_objects(path: Path) -> list[Obj]:
    objects = [Obj(*json.loads(line)) for line in path.read_text().splitlines()]
    return sorted(objects)


def on_page(objects: list[Obj], starts: list[int], page: int) -> list[Obj]:
    """The objects overlapping `page` (objects are assumed smaller than 64 KiB for the search)."""
    index = bisect.bisect_left(starts, page - 65536)
    found = []
    while index < len(objects) and objects[index].address < page + PAGE:
        item = objects[index]
        if item.address + item.size > page:
            found.append(item)
        index += 1
    return found


def label(item: Obj) -> str:
    owner = item.owner.rsplit("site-packages/", 1)[-1].rsplit("lib/python3.11/", 1)[-1]
    return f"{item.kind} {owner}".strip()


def attribute(objects: list[Obj], pages: list[int], zygote: int, child: int) -> tuple[collections.Counter[str], ...]:
    """(pages by dominant type, written objects by type, written objects by owner)."""
    starts = [item.address for item in objects]
    dominant: collections.Counter[str] = collections.Counter()
    written: collections.Counter[str] = collections.Counter()
    owners: collections.Counter[str] = collections.Counter()
    with open(f"/proc/{zygote}/mem", "rb") as before, open(f"/proc/{child}/mem", "rb") as after:
        for page in pages:
            before.seek(page)
            after.seek(page)
            old, new = before.read(PAGE), after.read(PAGE)
            weights: collections.Counter[str] = collections.Counter()
            for item in on_page(objects, starts, page):
                low, high = max(item.address, page) - page, min(item.address + item.size, page + PAGE) - page
                weights[item.kind] += high - low
                if old[low:high] != new[low:high]:
                    written[item.kind] += 1
                    owners[label(item)] += 1
            dominant[weights.most_common(1)[0][0] if weights else "(no object)"] += 1
    return dominant, written, owners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("zygote", type=int)
    parser.add_argument("child", type=int)
    parser.add_argument("--objects", type=Path, help="the zygote's dump (NEST_ZYGOTE_DEBUG_DUMP)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    pages = classify(args.zygote, args.child)
    for name, states in sorted(pages.items()):
        counts = {state: f"{len(found) * PAGE / 1024:.0f} KiB" for state, found in sorted(states.items())}
        print(f"{name}: {counts}")
    if args.objects is None:
        return
    copied = [page for states in pages.values() for page in states["copied"]]
    dominant, written, owners = attribute(load_objects(args.objects), copied, args.zygote, args.child)
    for title, counter in (("copied pages by dominant type", dominant), ("written objects by type", written)):
        print(f"\n{title}:")
        for kind, count in counter.most_common(args.top):
            print(f"  {count:6d}  {kind}")
    print("\nwritten objects by type and module:")
    for kind, count in owners.most_common(args.top * 2):
        print(f"  {count:6d}  {kind}")


if __name__ == "__main__":
    main()
