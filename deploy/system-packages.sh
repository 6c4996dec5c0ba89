#!/usr/bin/env bash
# The Debian packages the *tests* use besides Python: headless Chromium (the status page and the
# auditor's report are checked in a real browser, with pk12util from libnss3-tools for a client
# certificate), PostgreSQL 15 (the state store against a real server) and iproute2 (the
# several-hosts test in network namespaces). The product itself needs none of them.
#
# Called by deploy/bootstrap.sh. Installs only what is missing, and only as root with apt-get;
# otherwise it says which tests will skip and why, and carries on.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pk12util >/dev/null 2>&1 || need+=(libnss3-tools)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-packages: not root with apt-get; missing ${need[*]} —" \
         "the browser, PostgreSQL and network-namespace tests will skip and say why" >&2
    exit 0
fi
echo "system-packages: installing ${need[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${need[@]}" >/tmp/mor-system-packages.log 2>&1; then
    apt-get update >>/tmp/mor-system-packages.log 2>&1
    apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/mor-system-packages.log 2>&1 \
        || echo "system-packages: apt-get failed (see /tmp/mor-system-packages.log);" \
                "the tests that need ${need[*]} will say so" >&2
fi
