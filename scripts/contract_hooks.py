"""schemathesis hooks for scripts/contract.py: what OpenAPI 3.0 cannot say about the LAN API.

`GET /units/{unit}/diagnostics` ties its query parameters together, as the operation's summary
says: `kind` and `address` come together or not at all, `count` only with them, `count` is at
most 125 for `input`/`holding` (2000 for `coil`/`discrete`), and `address` + `count` stays within
65536 (400 `invalid_query` otherwise). OpenAPI 3.0 cannot relate two parameters, so cases whose
parameters are each valid but break one of these rules are not generated. Cases with an invalid
parameter of their own are kept (negative testing).
"""

import schemathesis

KINDS = {"coil": 2000, "discrete": 2000, "input": 125, "holding": 125}


def _int(v, lo, hi):
    if isinstance(v, bool):
        return None
    try:
        n = int(v) if isinstance(v, int) else int(str(v), 10)
    except ValueError:
        return None
    if str(v).strip() != str(n) and not isinstance(v, int):
        return None
    return n if lo <= n <= hi else None


def breaks_a_cross_parameter_rule(query):
    if any(not isinstance(v, (str, int)) for v in query.values()):
        return False  # a repeated or structured parameter: a negative case, keep it
    kind, address, count = query.get("kind"), query.get("address"), query.get("count")
    valid_kind = kind is None or kind in KINDS
    a = None if address is None else _int(address, 0, 65535)
    c = None if count is None else _int(count, 1, 2000)
    if not valid_kind or (address is not None and a is None) or (count is not None and c is None):
        return False  # a parameter is invalid by itself: a negative case, keep it
    if set(query) - {"kind", "address", "count"}:
        return False
    if (kind is None) != (address is None) or (count is not None and kind is None):
        return True
    if kind is None:
        return False
    n = 1 if c is None else c
    return n > KINDS[kind] or a + n > 65536


@schemathesis.hook
def filter_case(context, case):
    op = context.operation
    if op is None or getattr(op, "path", "") != "/units/{unit}/diagnostics":
        return True
    return not breaks_a_cross_parameter_rule(dict(case.query or {}))
