# One image for both roles:
#   docker run --rm -v /srv/cairn:/data cairn server --store file:/data token create --repo default --role admin --name ops
#   docker run -p 7420:7420 -v /srv/cairn:/data cairn                      # server (embedded folder store)
#   docker run -v /etc/cairn:/etc/cairn -v /data:/data cairn agent --config /etc/cairn/agent.yaml
# The server listens on 0.0.0.0 in the container, and a server reachable from the network
# refuses to start without access control: create a token first (above), or pass --insecure.
FROM node:20-bookworm-slim AS build
WORKDIR /app
# zstd-napi builds from source with node-gyp.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY common ./common
COPY server ./server
COPY client ./client
COPY bench ./bench
COPY bin ./bin
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/proto ./proto
COPY --from=build /app/bin ./bin
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV CAIRN_SERVER=127.0.0.1:7420
VOLUME ["/data"]
EXPOSE 7420
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["server", "--listen", "0.0.0.0:7420", "--store", "file:/data", "--index", "/data/index"]
