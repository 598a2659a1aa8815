# 6,000-message replay: publishes 6,000 messages on r.t through the ingest port, then
# resumes from before them five times, printing the ack time and the last message time (ms).
# Needs `corecast serve` on 127.0.0.1:8080/9000 and the `websockets` package. Loopback only.
import asyncio, json, socket, time, websockets, statistics
async def main():
    async with websockets.connect("ws://127.0.0.1:8080/ws", max_queue=None) as ws:
        await ws.send(json.dumps({"op":"subscribe","id":1,"topics":["r.t"]}))
        while True:
            m=json.loads(await ws.recv())
            if m["op"]=="ack": break
        epoch=m["topics"][0]["epoch"]; base=m["topics"][0]["seq"]
    s=socket.create_connection(("127.0.0.1",9000))
    pad="x"*100
    s.sendall(("".join('{"topic":"r.t","data":{"i":%d,"p":"%s"}}\n'%(i,pad) for i in range(6000))).encode())
    time.sleep(1.0)
    times=[]
    for run in range(5):
        async with websockets.connect("ws://127.0.0.1:8080/ws", max_queue=None) as ws:
            t0=time.perf_counter()
            await ws.send(json.dumps({"op":"subscribe","id":1,"topics":[{"topic":"r.t","since":{"epoch":epoch,"seq":base}}]}))
            n=0; t_ack=None
            while n<6000:
                m=json.loads(await ws.recv())
                if m["op"]=="ack":
                    t_ack=time.perf_counter()-t0; assert m["topics"][0]["recovered"] is True
                elif m["op"]=="msg": n+=1
            times.append((t_ack*1000,(time.perf_counter()-t0)*1000))
    print("6000-message replay: ack ms", ["%.1f"%a for a,_ in times], "last msg ms", ["%.1f"%b for _,b in times])
asyncio.run(main())
