# Writes the DHT wire test vectors of tests/dht_wire.rs with the original server's own
# entangled code (Python 2.7 with Twisted). Run once by hand, never from the tests:
#   python2.7 tests/data/dht/make_vectors.py /path/to/original/source tests/data/dht
import sys
sys.path.insert(0, sys.argv[1])
out = sys.argv[2]

from entangled.kademlia import encoding, msgformat, msgtypes, protocol

enc = encoding.Bencode()
fmt = msgformat.DefaultFormat()
node = '\x11' * 20
rpc = '\x22' * 20
key = '\x33' * 20


def wire(msg):
    return enc.encode(fmt.toPrimitive(msg))


def save(name, data):
    f = open('%s/%s' % (out, name), 'wb')
    f.write(data)
    f.close()


save('ping_request.bin', wire(msgtypes.RequestMessage(node, 'ping', (), rpc)))
save('store_request.bin', wire(msgtypes.RequestMessage(
    node, 'store', (key, 'Type: data\nvalue bytes', node, 42), rpc)))
save('find_value_request.bin', wire(msgtypes.RequestMessage(node, 'findValue', (key,), rpc)))
save('find_value_found.bin', wire(msgtypes.ResponseMessage(rpc, node, {key: 'the value'})))
save('find_node_response.bin', wire(msgtypes.ResponseMessage(
    rpc, node, [('\x44' * 20, '127.0.0.1', 4000), ('\x55' * 20, '::1', 4001)])))
save('pong_response.bin', wire(msgtypes.ResponseMessage(rpc, node, 'pong')))
save('error_reply.bin', wire(msgtypes.ErrorMessage(
    rpc, node, AttributeError, 'Invalid method: nosuch')))
# The form the original turns into code with `exec`: an exception "type" that is a program.
save('error_reply_hostile.bin', wire(msgtypes.ErrorMessage(
    rpc, node, '__import__("os").system("touch /tmp/dht-pwned") or Exception', 'x")#')))


# A response too large for one datagram, split by the original's _send.
class Transport(object):
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append(data)


class Now(object):
    def callLater(self, delay, f, *args):
        f(*args)


protocol.reactor = Now()
p = protocol.KademliaProtocol(None)
p.transport = Transport()
big = ''.join(chr(i % 251) for i in range(20000))
p._send(wire(msgtypes.ResponseMessage(rpc, node, {key: big})), rpc, ('127.0.0.1', 1))
for i, d in enumerate(p.transport.sent):
    save('split_%d.bin' % i, d)
