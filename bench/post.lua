-- wrk: POST one signed delivery (BENCH_BODY file, BENCH_SIGNATURE) over and over; for the echo ceiling check only.
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "deployment_protection_rule"
wrk.headers["X-GitHub-Delivery"] = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE")
