import { Code, dataLoss } from '../common/errors.js';
import type { Node } from '../common/messages.js';
import { MAX_TREE_ENTRIES, validateNodes } from '../common/tree.js';
import type { Connection } from './connection.js';

/**
 * A whole directory from ReadTree, held to the rules the server applies on upload (sorted,
 * unique, safe names, at most MAX_TREE_ENTRIES): the client does not trust the server's trees.
 * `what` names the directory in errors, which are DATA_LOSS.
 */
export async function readTree(conn: Connection, id: Buffer, what: string): Promise<Node[]> {
  const nodes: Node[] = [];
  for await (const msg of conn.stream<{ nodes: Node[] }>('ReadTree', { id })) {
    nodes.push(...msg.nodes);
    if (nodes.length > MAX_TREE_ENTRIES) throw dataLoss(`${what}: the server sent more than ${MAX_TREE_ENTRIES} entries`);
  }
  validateNodes(nodes, what, Code.DATA_LOSS);
  return nodes;
}
