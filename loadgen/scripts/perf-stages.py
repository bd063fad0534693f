#!/usr/bin/env python3
"""Where the collector's CPU goes, per stage, from a `perf script` dump.

    perf record -F 499 -g --call-graph dwarf,16384 -p <collector pid> -o out.data -- sleep 30
    perf script -i out.data > out.script
    loadgen/scripts/perf-stages.py out.script

Each sample goes to the first stage whose keywords appear anywhere in its stack
(the order below matters: a sample in two stages counts in the first). Used for
BENCHMARKS.md, "Toward the floor".
"""
import sys,collections
samples=[];cur=[]
for line in open(sys.argv[1]):
    if not line.strip():
        if cur: samples.append(cur)
        cur=[];continue
    if line[0] not in ' \t': cur=[];continue
    parts=line.strip().split(None,1)
    if len(parts)==2: cur.append(parts[1])
if cur: samples.append(cur)
rules=[
 ('state file (last reads, every 1 s)',['Watermarks::persist']),
 ('Kafka: librdkafka (produce, compress, I/O)',['rd_kafka','rdkafka','snappy','lz4']),
 ('record JSON encoding + batching',['encode_json','collector_core::sink','batcher','record::']),
 ('OPC UA response decode',['Chunker::decode','decode_by_object_id','BinaryDecodable','ReceiveStream']),
 ('OPC UA request encode + send buffer',['BinaryEncodable','SendBuffer','encode_to']),
 ('DataValue -> sample conversion',['convert::sample','as_chrono']),
 ('socket send (kernel)',['sendto','tcp_sendmsg','sys_write','__x64_sys_write']),
 ('socket receive (kernel)',['recvfrom','tcp_recvmsg','sys_read','__x64_sys_read']),
 ('runtime park / epoll / wake-ups',['epoll_wait','park','unpark','futex','Condvar','wake']),
 ('timers',['time::Driver','wheel','hrtimer','TimerEntry','sleep_until']),
 ('allocation',['mi_','malloc','free']),
 ('session event loop (other)',['SessionEventLoop','SecureChannelEventLoop','transport::']),
 ('schedules, reads (other)',['scheduler::','reader::','run_device','Session>::read']),
 ('metrics, logs, HTTP',['metrics','tracing','hyper','axum']),
]
c=collections.Counter()
for st in samples:
    txt=' | '.join(st)
    for name,keys in rules:
        if any(k in txt for k in keys):
            c[name]+=1;break
    else: c['other']+=1
N=len(samples)
print(f'{N} samples')
for k,v in c.most_common(): print(f'{100*v/N:5.1f} %  {k}')
