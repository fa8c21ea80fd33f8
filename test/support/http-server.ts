// SPDX-License-Identifier: LGPL-2.1-only
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Writes the response to one request. */
export type RouteHandler = (request: IncomingMessage, response: ServerResponse) => void;

export interface TestHttpServer {
  /** `http://127.0.0.1:<port>`, without a trailing slash. */
  baseUrl: string;
  /** Paths of all requests received so far, in arrival order, including unrouted ones. */
  requests: string[];
  /**
   * Serves `path` with `handlers[n]` for its n-th request (counting from 0);
   * once the list runs out, the last handler serves every later request.
   */
  route(path: string, ...handlers: RouteHandler[]): void;
  /** Number of requests received for `path`. */
  requestCount(path: string): number;
  /** Stops the server and destroys open connections, including stalled responses. */
  close(): Promise<void>;
}

/** Starts an HTTP server on a free port of 127.0.0.1. Unrouted paths get 404. */
export async function startHttpServer(): Promise<TestHttpServer> {
  const routes = new Map<string, RouteHandler[]>();
  const requests: string[] = [];
  const requestCount = (path: string): number => requests.filter((requested) => requested === path).length;

  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://127.0.0.1').pathname;
    const index = requestCount(path);
    requests.push(path);

    const handlers = routes.get(path);
    if (handlers === undefined) {
      sendStatus(404)(request, response);
      return;
    }
    handlers[Math.min(index, handlers.length - 1)](request, response);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    requests,
    route(path, ...handlers) {
      if (handlers.length === 0) {
        throw new Error(`route ${path} needs at least one handler`);
      }
      routes.set(path, handlers);
    },
    requestCount,
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((error) => (error === undefined ? resolve() : reject(error)));
        server.closeAllConnections();
      });
    },
  };
}

/** Sends `body` with status 200 and its Content-Length. */
export function sendBytes(body: Uint8Array | string): RouteHandler {
  return (_request, response) => {
    response.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': Buffer.byteLength(body) });
    response.end(body);
  };
}

/** Sends an empty response with `status`. */
export function sendStatus(status: number): RouteHandler {
  return (_request, response) => {
    response.writeHead(status, { 'Content-Length': 0 });
    response.end();
  };
}

/** Redirects with 302 to `location`, a path on this server or an absolute URL. */
export function redirectTo(location: string): RouteHandler {
  return (_request, response) => {
    response.writeHead(302, { Location: location, 'Content-Length': 0 });
    response.end();
  };
}

/**
 * Announces the full Content-Length of `body`, sends its first half and then
 * destroys the connection, as a server or proxy that dies mid-transfer does.
 */
export function dropMidBody(body: Uint8Array): RouteHandler {
  return (_request, response) => {
    response.writeHead(200, { 'Content-Length': body.length });
    // Destroying the socket only after the write is flushed makes sure the
    // client sees the first half before the connection breaks.
    response.write(body.subarray(0, Math.floor(body.length / 2)), () => response.socket?.destroy());
  };
}

/**
 * Announces the full Content-Length of `body`, sends its first `sentBytes`
 * bytes and then sends nothing more until the server is closed.
 */
export function stallAfter(body: Uint8Array, sentBytes: number): RouteHandler {
  return (_request, response) => {
    response.writeHead(200, { 'Content-Length': body.length });
    if (sentBytes === 0) {
      response.flushHeaders();
      return;
    }
    response.write(body.subarray(0, sentBytes));
  };
}
