const WASM_PAGE = 64 * 1024;

/**
 * A buffer that starts on a memory page, as direct I/O (O_DIRECT) needs: the kernel refuses
 * (EINVAL) to transfer from an address not aligned to the device's blocks. Node's Buffers come
 * from malloc, 16 bytes past a page; a WebAssembly memory is mapped whole, so it starts on one.
 * Its size is fixed: growing a WebAssembly memory would detach this view.
 */
export function pageAlignedBuffer(bytes: number): Buffer {
  const pages = Math.ceil(bytes / WASM_PAGE);
  return Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer, 0, bytes);
}
