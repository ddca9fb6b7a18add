"""A BMS over Modbus/TCP Security: pymodbus's TLS client with a client certificate.

Usage: bms_tls_client.py HOST PORT CA CERT KEY
Reads commands from stdin, one per line, and answers each with one line:
  read UNIT ADDR COUNT   -> "ok V1,V2,..." | "exception N" | "error TEXT"
  write UNIT ADDR VALUE  -> "ok" | "exception N" | "error TEXT"   (FC06)
  writes UNIT ADDR V1,V2 -> "ok" | "exception N" | "error TEXT"   (FC16)
  readc UNIT ADDR COUNT  -> "ok B1,B2,..." (0/1) | "exception N" | "error TEXT" (FC01)
  writec UNIT ADDR 0|1   -> "ok" | "exception N" | "error TEXT"   (FC05)
  writecs UNIT ADDR 1,0  -> "ok" | "exception N" | "error TEXT"   (FC15)
The first line printed is "connected" or "not-connected".
"""

import ssl
import sys

from pymodbus.client import ModbusTlsClient
from pymodbus.exceptions import ModbusException

host, port, ca, cert, key = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
# pymodbus wraps the socket without a server name, so the name cannot be checked; the chain to
# the site CA still is (verify_mode stays CERT_REQUIRED).
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
client = ModbusTlsClient(host, port=int(port), sslctx=ctx, timeout=2, retries=0)
try:
    connected = client.connect()
except Exception:  # noqa: BLE001 - a refused handshake may raise
    connected = False
print("connected" if connected else "not-connected", flush=True)

for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    try:
        if parts[0] == "read":
            unit, addr, count = (int(x) for x in parts[1:4])
            rr = client.read_holding_registers(addr, count=count, device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                print("ok " + ",".join(str(r) for r in rr.registers), flush=True)
        elif parts[0] == "write":
            unit, addr, value = (int(x) for x in parts[1:4])
            rr = client.write_register(addr, value, device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                print("ok", flush=True)
        elif parts[0] == "writes":
            unit, addr = int(parts[1]), int(parts[2])
            values = [int(x) for x in parts[3].split(",")]
            rr = client.write_registers(addr, values, device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                print("ok", flush=True)
        elif parts[0] == "readc":
            unit, addr, count = (int(x) for x in parts[1:4])
            rr = client.read_coils(addr, count=count, device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                # The response is padded to whole bytes: only the bits asked for.
                print("ok " + ",".join(str(int(b)) for b in rr.bits[:count]), flush=True)
        elif parts[0] == "writec":
            unit, addr, value = (int(x) for x in parts[1:4])
            rr = client.write_coil(addr, bool(value), device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                print("ok", flush=True)
        elif parts[0] == "writecs":
            unit, addr = int(parts[1]), int(parts[2])
            values = [x == "1" for x in parts[3].split(",")]
            rr = client.write_coils(addr, values, device_id=unit)
            if rr.isError():
                print(f"exception {rr.exception_code}", flush=True)
            else:
                print("ok", flush=True)
        else:
            print("error unknown command", flush=True)
    except ModbusException as e:
        print(f"error {type(e).__name__}", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported to the test
        print(f"error {type(e).__name__}", flush=True)
client.close()
