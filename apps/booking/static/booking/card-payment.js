// Pays a held slot by card in the page, through Stripe.js. The server makes
// the PaymentIntent (manual capture), confirms it with the card's payment
// method and captures it once the slot is confirmed the customer's; this
// script only carries the card from Stripe's field to the server, and lets
// Stripe.js ask the customer's bank when it wants them to confirm (3-D Secure).
(function () {
  const form = document.getElementById("card-payment");
  if (!form) return;
  const api = form.dataset.paymentUrl;  // .../payment/
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const button = document.getElementById("card-pay");
  const say = (text) => { document.getElementById("card-message").textContent = text; };

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((answer.error && answer.error.message) || "Payment failed.");
    return answer;
  }

  // A payment method from the card field. Stripe.js makes one; a stand-in
  // without createPaymentMethod (a local test server) makes a card token,
  // whose card serves the same purpose there.
  async function paymentMethod() {
    const made = await stripe.createPaymentMethod({ type: "card", card: card });
    if (made && made.paymentMethod) return made.paymentMethod.id;
    if (made && made.error) throw new Error(made.error.message);
    const tokenised = await stripe.createToken(card);
    if (tokenised.error) throw new Error(tokenised.error.message || "The card was not accepted.");
    return tokenised.token.card.id;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    say("Paying…");
    try {
      const payment = await post(api);
      let answer = await post(`${api}authorise/`, { payment_method: await paymentMethod() });
      if (answer.status === "requires_action") {
        say("Your bank asks you to confirm the payment…");
        const confirmed = await stripe.confirmCardPayment(payment.client_secret);
        if (confirmed.error) throw new Error(confirmed.error.message || "The payment was not confirmed.");
        answer = await post(`${api}check/`);
      }
      if (answer.reservation_status !== "pending" || answer.outcome) {
        window.location.reload();
        return;
      }
      say("Your payment is being processed: this page updates when it is done.");
      setTimeout(() => window.location.reload(), 3000);
    } catch (error) {
      say(error.message);
      button.disabled = false;
    }
  });
})();
