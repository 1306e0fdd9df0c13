# One neostore image for every role: the command picks it.
#
#   docker build -t neostore .                     # FROM python:3.11-slim
#   docker/build-base.sh && docker build --build-arg BASE_IMAGE=neostore-base:bookworm -t neostore .
#
#   docker run neostore master | storage | neoctl ARGS... | demo | health
#
# Configuration: NEOSTORE_* environment variables, or a mounted file of
# NEOSTORE_*=value lines (/etc/neostore/neostore.env, or $NEOSTORE_CONFIG);
# see docker/entrypoint.py.  Data: the /data volume.  Runs as uid 10001.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/neostore \
    PATH=/opt/neostore/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The dependencies first, from pyproject.toml alone: this layer stays cached
# while only the project's code changes.
COPY pyproject.toml /tmp/neostore-src/pyproject.toml
# (The build requirements too: the project then installs without fetching them.)
RUN python3 -m venv /opt/neostore \
 && python3 -c "import tomllib; p = tomllib.load(open('/tmp/neostore-src/pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/neostore/bin/pip install --quiet -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project itself (.dockerignore keeps the context to what it needs).
COPY . /tmp/neostore-src
RUN /opt/neostore/bin/pip install --quiet --no-deps --no-build-isolation /tmp/neostore-src \
 && mkdir -p /opt/neostore/examples \
 && cp /tmp/neostore-src/examples/*.py /opt/neostore/examples/ \
 && install -m 0755 /tmp/neostore-src/docker/entrypoint.py /opt/neostore/bin/neostore-docker \
 && sed -i '1s|.*|#!/opt/neostore/bin/python|' /opt/neostore/bin/neostore-docker \
 && rm -rf /tmp/neostore-src \
 && echo 'neo:x:10001:10001:neostore:/data:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'neo:x:10001:' >> /etc/group \
 && mkdir -p /data /etc/neostore \
 && chown 10001:10001 /data

ENV NEOSTORE_DATA=/data \
    NEOSTORE_CLUSTER=neostore
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5551

# Standard gRPC health protocol (grpc.health.v1) against the node's own port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["neostore-docker", "health"]

ENTRYPOINT ["neostore-docker"]
CMD ["help"]

LABEL org.opencontainers.image.title="neostore" \
      org.opencontainers.image.description="A replicated, partitioned, transactional storage cluster for ZODB" \
      org.opencontainers.image.licenses="ZPL-2.1"
