"""A third-party Modbus TCP device for interop tests: pymodbus 3.x serving a CoolMasterNet-style
VA block (16 holding registers of VA 1, wire addresses 16-31) at the device id given on the
command line.

usage: pymodbus_server.py PORT DEVICE_ID
"""
import asyncio
import sys

from pymodbus.server import StartAsyncTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


async def main() -> None:
    port = int(sys.argv[1])
    device_id = int(sys.argv[2])
    # mode cool, fan auto, setpoint 24.0, off, no filter sign, swing auto, room 26.8, no failure
    va = [0, 3, 240, 0, 0, 5, 268, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    device = SimDevice(
        id=device_id,
        simdata=[SimData(address=16, values=va, datatype=DataType.REGISTERS)],
    )
    print(f"pymodbus serving id {device_id} on 127.0.0.1:{port}", flush=True)
    await StartAsyncTcpServer(context=device, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main())
