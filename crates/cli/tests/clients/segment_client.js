// Drives Chronicle with the official Segment Node client (@segment/analytics-node).
// Usage: node segment_client.js URL WRITE_KEY PREFIX
// Same messages as segment_client.py (pages, identify, alias, group, track), each with a fixed messageId;
// exits non-zero on any error.
const { Analytics } = require('@segment/analytics-node')

const [url, writeKey, prefix] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host: url, flushInterval: 50, maxRetries: 1 })
const errors = []
analytics.on('error', (err) => errors.push(String(err && (err.reason || err.message || err))))

const user = `${prefix}-user`
const anon = `${prefix}-anon`
analytics.page({ anonymousId: anon, name: 'Pricing', properties: { path: '/pricing' }, messageId: `${prefix}-m1` })
analytics.page({ anonymousId: `${anon}2`, name: 'Features', properties: { path: '/features' }, messageId: `${prefix}-m5` })
analytics.identify({ userId: user, anonymousId: anon, traits: { email: `${prefix}@example.com`, first_name: 'Ada', plan: 'pro' }, messageId: `${prefix}-m2` })
analytics.alias({ previousId: `${anon}2`, userId: user, messageId: `${prefix}-m6` })
analytics.group({ userId: user, groupId: `${prefix}-acme`, traits: { name: 'Acme', employees: 40 }, messageId: `${prefix}-m7` })
analytics.track({ userId: user, event: 'Product Added', properties: { sku: 'sku-101', price: 349 }, messageId: `${prefix}-m3` })
analytics.page({ userId: user, name: 'Checkout', properties: { path: '/checkout' }, messageId: `${prefix}-m4` })

analytics.closeAndFlush({ timeout: 10000 }).then(() => {
  if (errors.length) {
    console.error('errors:', errors)
    process.exit(1)
  }
  console.log('sent 7 messages')
})
