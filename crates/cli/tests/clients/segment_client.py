"""Drives Chronicle with the official Segment Python client (segment-analytics-python).

Usage: segment_client.py URL WRITE_KEY PREFIX
Sends, for user PREFIX-user: anonymous pages under PREFIX-anon and PREFIX-anon2, an identify with
traits that carries PREFIX-anon, an alias of PREFIX-anon2, a group, a track and a page; each with a fixed
messageId, so a rerun is a pure retry.
Exits non-zero if the client reports any error.
"""
import sys

import segment.analytics as analytics

url, write_key, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
errors = []
analytics.write_key = write_key
analytics.host = url
analytics.sync_mode = True  # send each call at once, so failures surface here
analytics.on_error = lambda error, items: errors.append(repr(error))

user, anon = f"{prefix}-user", f"{prefix}-anon"
analytics.page(anonymous_id=anon, name="Pricing", properties={"path": "/pricing"}, message_id=f"{prefix}-m1")
analytics.page(anonymous_id=f"{anon}2", name="Features", properties={"path": "/features"}, message_id=f"{prefix}-m5")
analytics.identify(
    user,
    {"email": f"{prefix}@example.com", "first_name": "Ada", "plan": "pro"},
    anonymous_id=anon,
    message_id=f"{prefix}-m2",
)
analytics.alias(f"{anon}2", user, message_id=f"{prefix}-m6")
analytics.group(user, f"{prefix}-acme", {"name": "Acme", "employees": 40}, message_id=f"{prefix}-m7")
analytics.track(user, "Product Added", {"sku": "sku-101", "price": 349}, message_id=f"{prefix}-m3")
analytics.page(user, name="Checkout", properties={"path": "/checkout"}, message_id=f"{prefix}-m4")
analytics.flush()
if errors:
    print("errors:", errors, file=sys.stderr)
    sys.exit(1)
print("sent 7 messages")
