/**
 * Which worker takes the next job: the least loaded, or a new one while every running worker
 * is busy and fewer than `max` run. Pools start workers on demand this way, so a run that
 * needs none (an unchanged snapshot) starts none. `spawn` starts one and returns its index.
 */
export function chooseWorker(load: readonly number[], max: number, spawn: () => number): number {
  let best = 0;
  for (let i = 1; i < load.length; i++) if (load[i] < load[best]) best = i;
  return (load.length === 0 || load[best] > 0) && load.length < max ? spawn() : best;
}
