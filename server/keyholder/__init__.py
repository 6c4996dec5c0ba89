"""The fused-only key holder: a separate process that owns the CKKS secret key.

In ``fused-only`` mode the aggregation server must never see one client's score, so it must
not hold the secret key at all. The key holder does: it publishes the public context, and
decrypts exactly one kind of thing for exactly one caller — the *fused* reward ciphertext,
for the server's certificate identity — rounding every result (Li–Micciancio) and counting
and audit-logging every decryption. Modules: ``config`` (TOML), ``app`` (FastAPI over mTLS),
``client`` (:class:`KeyHolderClient`, what the server's coordinator uses).
"""
