# The leasekeeper sidecar, built by docker/build.sh.
FROM scratch
COPY leasekeeper /usr/local/bin/leasekeeper
ENTRYPOINT ["/usr/local/bin/leasekeeper"]
