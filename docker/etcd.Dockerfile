# etcd's own server, built from the module's etcd version by docker/build.sh.
FROM scratch
COPY etcd /usr/local/bin/etcd
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
