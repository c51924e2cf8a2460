"""Reads Kafka records as JSON lines on stdin and parses each with the
official CloudEvents Python SDK's Kafka binding (binary mode), plus the
checks the SDK leaves out: an RFC 3339 `time`, a `source` made of URI
characters only, and no attribute header that is not lower case.

Each input line: {"topic", "partition", "offset", "key": hex|null,
"value": hex|null, "headers": [[name, hex|null], ...]}.
Prints one JSON object: {"checked": N, "rejected": [{"topic", "partition",
"offset", "error"}, ...]} and exits 0; the Rust test decides.
"""

import json
import re
import sys

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

# RFC 3339 section 5.6 date-time.
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# The characters RFC 3986 allows in a URI-reference (unreserved, reserved
# and percent escapes).
URI_CHARS = re.compile(r"^([A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$")


def problems(headers):
    found = []
    for name, value in headers:
        lower = name.lower()
        if (lower.startswith("ce_") or lower == "content-type") and name != lower:
            found.append(f"header {name!r} is read as an attribute by readers that lower-case names")
    values = {name.lower(): value for name, value in headers}
    time = values.get("ce_time")
    if time is not None and not RFC3339.match(time.decode("utf-8")):
        found.append(f"ce_time {time!r} is not RFC 3339")
    source = values.get("ce_source")
    if source is not None and not URI_CHARS.match(source.decode("utf-8")):
        found.append(f"ce_source {source!r} is not a URI-reference")
    return found


def main():
    checked, rejected = 0, []
    for line in sys.stdin:
        if not line.strip():
            continue
        record = json.loads(line)
        where = {k: record[k] for k in ("topic", "partition", "offset")}
        checked += 1
        try:
            headers = [
                (name, bytes.fromhex(value) if value is not None else b"")
                for name, value in record["headers"]
            ]
            message = KafkaMessage(
                headers=dict(headers),
                key=bytes.fromhex(record["key"]) if record["key"] is not None else None,
                value=bytes.fromhex(record["value"]) if record["value"] is not None else b"",
            )
            from_binary(message, JSONFormat())
            errors = problems(headers)
        except Exception as e:  # the SDK raises several kinds
            errors = [f"{type(e).__name__}: {e}"]
        if errors:
            names = [name for name, _ in record["headers"]]
            rejected.append(dict(where, error="; ".join(errors), headers=names))
    json.dump({"checked": checked, "rejected": rejected}, sys.stdout)


if __name__ == "__main__":
    main()
