// Starts Converse.js with the appliance's settings (the page's JSON block) and,
// for /?jid=<room or contact>&message=<stanza-id>, opens that chat once logged in
// and scrolls to that message.
(function () {
  "use strict";
  const settings = JSON.parse(document.getElementById("hipchat-settings").textContent);
  // The WebSocket endpoint is on this very host and port, whatever name the browser used for it.
  settings.websocket_url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + settings.websocket_path;
  delete settings.websocket_path;

  // A guest's page (/guest/<token>): once its one session ends (it left, or guest access was turned
  // off) there is nothing to log back in to, so the page says so instead of showing a login form.
  const guest = settings.hipchat_guest;
  delete settings.hipchat_guest;

  const params = new URLSearchParams(location.search);
  const target = { jid: params.get("jid"), message: params.get("message") };

  converse.plugins.add("hipchat-links", {
    initialize() {
      const api = this._converse.api;
      if (guest) api.listen.on("disconnected", showGuestEnded);
      if (!target.jid) return;
      api.listen.once("chatBoxesFetched", async () => {
        const isRoom = target.jid.includes("@" + settings.muc_domain);
        const chat = isRoom ? await api.rooms.open(target.jid, {}, true) : await api.chats.open(target.jid, {}, true);
        if (chat && target.message) showMessage(chat, target.jid, target.message);
      });
    },
  });

  function showGuestEnded() {
    const notice = document.createElement("p");
    notice.className = "hipchat-guest-ended";
    notice.setAttribute("role", "alert");
    notice.textContent = "Your guest session has ended. To chat again, open the guest link again.";
    document.body.replaceChildren(notice);
  }

  // Waits (up to 20 s) for the message to arrive through history, then scrolls to it.
  function showMessage(chat, jid, stanzaId) {
    const deadline = Date.now() + 20000;
    const look = () => {
      // Converse keeps a stanza-id under "stanza_id <archive's JID>": the room's, or our own account's.
      const found = chat.messages && chat.messages.find((m) =>
        Object.entries(m.attributes).some(([name, value]) => name.startsWith("stanza_id") && value === stanzaId));
      const element = found && document.querySelector('[data-msgid="' + CSS.escape(found.get("msgid")) + '"]');
      if (element) {
        element.classList.add("hipchat-found");
        element.scrollIntoView({ block: "center" });
        document.body.dataset.hipchatFound = stanzaId;
      } else if (Date.now() < deadline) {
        setTimeout(look, 250);
      }
    };
    look();
  }

  // Converse's footer under the login form shows its sponsors' logos from their web site:
  // an element of the same name defined first takes its place (Converse skips names already defined).
  customElements.define("converse-footer", class extends HTMLElement {});

  settings.whitelisted_plugins = ["hipchat-links"];
  converse.initialize(settings);
})();
