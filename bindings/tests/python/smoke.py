"""Smoke test of the generated Python bindings against a real station.

Run by scripts/bindings.sh with the generated module and the library on
PYTHONPATH and FR_STATION_BIN naming the station binary.
"""
import os
import subprocess
import sys
import tempfile
import threading

import fieldreport_ffi as fr

passed = failed = 0


def check(name, cond):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAILED: {name}", file=sys.stderr)


def raises(name, exc_type, fn):
    try:
        fn()
    except exc_type:
        check(name, True)
        return
    except Exception as e:  # noqa: BLE001
        print(f"{name}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
    check(name, False)


station_bin = os.environ["FR_STATION_BIN"]
with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "station")
    serve = subprocess.Popen(
        [station_bin, "serve", "--data", data, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True)
    try:
        # "station pin: …", then "serving on https://…".
        pin = serve.stdout.readline().strip().split("station pin: ", 1)[1]
        url = serve.stdout.readline().strip().split("serving on ", 1)[1]
        check("served over TLS", url.startswith("https://"))
        code = subprocess.run(
            [station_bin, "enroll", "--data", data, "--name", "Py Officer",
             "--star", "7001", "--role", "officer", "--unit", "District 9"],
            check=True, capture_output=True, text=True).stdout
        code = next(l for l in code.splitlines()
                    if l.startswith("enrollment code:")).split(":", 1)[1].strip()

        key = fr.generate_store_key()
        check("a key is 32 bytes", len(key) == 32)
        store = fr.FieldReportStore.open(os.path.join(tmp, "device"), key)
        raises("wrong key", fr.FieldReportError.WrongKey,
               lambda: fr.FieldReportStore.open(os.path.join(tmp, "device"), fr.generate_store_key()))
        raises("create before enrolling", fr.FieldReportError.NotEnrolled,
               store.create_report)
        raises("another station key", fr.FieldReportError.StationPinMismatch,
               lambda: store.enroll(url, code, "sha256//" + "A" * 43 + "="))
        raises("plain http to another machine", fr.FieldReportError.InvalidInput,
               lambda: store.enroll("http://192.0.2.1:8787", code))
        me = store.enroll(url, code, pin)
        check("pin kept", store.station_pin() == pin)
        check("enrolled as officer", me.role == "officer" and me.star_number == "7001")
        r = store.create_report()
        store.set_field(r, "narrative", fr.FieldValue.TEXT("Agents detained a man at the bus stop."))
        v = store.field(r, "narrative")
        check("field reads back", v == fr.FieldValue.TEXT("Agents detained a man at the bus stop."))
        raises("unknown field", fr.FieldReportError.InvalidInput,
               lambda: store.set_field(r, "no_such_field", fr.FieldValue.NULL()))
        raises("bad id", fr.FieldReportError.InvalidInput,
               lambda: store.report("not-a-uuid"))
        raises("panic becomes Internal", fr.FieldReportError.Internal, fr.debug_trigger_panic)
        check("one unsynced change at least", store.unsynced_count() >= 2)
        s = store.sync(None, None)
        check("sync pushed", s.pushed >= 2 and store.unsynced_count() == 0)

        # The supervisor workflow through the bindings.
        def code_for(name, star, role):
            out = subprocess.run(
                [station_bin, "enroll", "--data", data, "--name", name, "--star", star,
                 "--role", role, "--unit", "District 9"],
                check=True, capture_output=True, text=True).stdout
            return next(l for l in out.splitlines()
                        if l.startswith("enrollment code:")).split(":", 1)[1].strip()
        sup = fr.FieldReportStore.open(os.path.join(tmp, "supervisor"), fr.generate_store_key())
        sup.enroll(url, code_for("Py Sergeant", "7900", "supervisor"))
        raises("submit with fields missing", fr.FieldReportError.MissingRequired,
               lambda: store.submit(r))
        store.set_field(r, "occurred.start", fr.FieldValue.TIME(1_795_705_200_000))
        store.set_field(r, "location.address", fr.FieldValue.TEXT("W 26th St"))
        store.set_field(r, "federal_agencies", fr.FieldValue.TEXT_LIST(["ice"]))
        raises("officer cannot approve", fr.FieldReportError.NotAllowed, lambda: store.approve(r))
        store.submit(r)
        store.sync(None, None)
        sup.sync(None, None)
        raises("supervisor cannot edit", fr.FieldReportError.NotAllowed,
               lambda: sup.set_field(r, "narrative", fr.FieldValue.TEXT("x")))
        sup.return_report(r, "Add the badge number.")
        sup.record_review(r, "Reviewed.", "Kept distance.", False)
        sup.sync(None, None)
        store.sync(None, None)
        v = store.report(r)
        check("returned with comment", v.lifecycle == "returned"
              and v.return_comment == "Add the badge number." and v.review_done_ms is not None
              and v.review_due_ms == 1_795_705_200_000 + 30 * 86_400_000)
        store.set_field(r, "narrative", fr.FieldValue.TEXT("Amended."))
        store.submit(r)
        check("amendment listed", "narrative" in store.report(r).amended_paths)
        store.sync(None, None)
        sup.sync(None, None)
        sup.approve(r)
        raises("approving twice is refused", fr.FieldReportError.NotAllowed,
               lambda: sup.approve(r))
        sup.refer(r, 1_795_800_000_000, "SA-2026-1", ["aggravated battery"])
        sup.close(r)
        check("closed", sup.report(r).lifecycle == "closed")
        # Sign out and wipe: everything is at the station, so no force needed.
        sup.sync(None, None)
        w = sup.wipe(False)
        check("supervisor wiped", w.unsynced_changes == 0
              and not os.path.exists(os.path.join(tmp, "supervisor")))
        raises("wiped store", fr.FieldReportError.Wiped, sup.create_report)
        # The last reference dropped on a plain thread frees the Rust object there.
        holder = [store]
        del store
        t = threading.Thread(target=holder.clear)
        t.start()
        t.join()
        check("store freed from a plain thread", not holder)
    finally:
        serve.terminate()
        serve.wait()

print(f"python: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
