"""The test harness: processes, services, faults, the browser-like SSE client and the ledger they are judged by."""
