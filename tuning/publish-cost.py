# Server CPU per published message with no subscriber: sends N lines (default 1,000,000)
# of ~50 bytes over 100 topics to the ingest port of a running `corecast serve`, as fast as
# one TCP connection takes them, then waits for the server to close. Read the server's CPU
# time from /proc/PID/stat before and after. Loopback only.
#   python3 tuning/publish-cost.py 1000000
import socket, sys, time
n=int(sys.argv[1]); topics=100
line=[('{"topic":"cost.t%d","data":{"p":"43210.5","q":"0.0100"}}\n'%(i%topics)).encode() for i in range(topics)]
buf=b"".join(line[i%topics] for i in range(n))
s=socket.create_connection(("127.0.0.1",9000))
t=time.time(); s.sendall(buf); s.shutdown(socket.SHUT_WR); s.recv(1)
print("sent %d lines in %.2f s"%(n,time.time()-t))
